"""``python -m calosim ...`` (and ``torchrun ... -m calosim train ...``): the ``calosim`` command line."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="calosim")
