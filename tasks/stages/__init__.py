"""One module or package per stage, named after it; each exports STAGE (listed in tasks/runtime/registry.py)."""
