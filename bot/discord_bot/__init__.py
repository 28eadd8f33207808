"""The Discord front end: discord.py events and slash commands, over the shared ChatService.

Named discord_bot so that it never shadows the `discord` library itself.
"""
