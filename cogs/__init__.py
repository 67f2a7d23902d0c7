"""Discord extensions (slash commands, buttons). They translate interactions into service calls."""
