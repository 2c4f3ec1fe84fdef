from m3w.cli import main

# Guarded: worker processes started with `spawn` (a local Dask cluster) import this module again.
if __name__ == "__main__":
    raise SystemExit(main())
