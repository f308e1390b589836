"""Scoring: embedders that turn texts into vectors, the statistics of a sample, and the
verdict a check draws from them."""
