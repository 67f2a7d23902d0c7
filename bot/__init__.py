"""imagine-bot: slash commands in, images out (qwen-image-plus through the Nebula gateway).

Layering: everything in ``bot/`` except ``app.py``, ``tree.py`` and ``ui/`` is free of
``discord`` imports, so the CLI runs the same pipeline as the bot.
"""

__version__ = "0.1.0"
