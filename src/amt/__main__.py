"""`python -m amt ...` (also what `torchrun -m amt train ...` runs)."""

from amt.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
