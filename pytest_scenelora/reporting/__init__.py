"""What a run shows and keeps: the terminal report, the JSON results, the HTML report,
GitHub annotations and summaries, and the baseline a later run is compared with."""
