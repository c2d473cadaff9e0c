"""Reports: provenance, run manifests, HTML export of executed notebooks, plots, and the index.

This room only reads what the others write (stages.json, metrics.jsonl, run.json); it never trains or
evaluates anything itself.
"""
