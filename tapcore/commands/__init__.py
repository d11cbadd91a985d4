"""CLI subcommands, one module per workflow area.

Every module here defines ``register(subparsers)``, which adds its subcommands with
``parser.set_defaults(func=handler)``; ``handler(args) -> int`` returns the exit code.
``tapcore.cli`` discovers the modules automatically.
"""
