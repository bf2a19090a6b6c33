"""Command-line tools on the DepthCLIP engine: infer, evaluate, bench, bag, demo."""
