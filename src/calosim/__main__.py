"""``python -m calosim ...`` (and ``torchrun ... -m calosim train ...``): the ``calosim`` command line."""

if __name__ == "__main__":
    from .interrupts import exit_on_interrupt, install_interrupt_handlers

    install_interrupt_handlers()  # before importing the CLI: a Ctrl-C at start-up exits 130, not a traceback
    with exit_on_interrupt():
        from .cli import main
    main(prog_name="calosim")
