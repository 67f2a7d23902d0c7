"""The Discord-facing side of the bot (imports discord): rendering, delivery, the reply flow."""
