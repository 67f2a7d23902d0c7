"""`python -m bot [COMMAND]`: the same subcommands as `imagine-bot`; no argument starts the bot."""

from bot.cli import main

raise SystemExit(main())
