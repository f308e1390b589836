"""The model engine: bases (the tiny one it builds, local folders), adapters, the adapter
library that switches and mixes them, generation and training. Imports nothing above it."""
