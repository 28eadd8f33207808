"""The bot's pure logic: no discord.py, no torch, no database. Tested with plain values."""
