"""Entry points: train, evaluate, bench (`python -m experiments.<name> --help`)."""
