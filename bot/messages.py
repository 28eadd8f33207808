"""Every sentence the bot says to users, in one place, so wording stays consistent
and can be changed (or translated) without hunting through the code."""

EMPTY_MESSAGE = "Your message is empty, so there is nothing for me to answer. Type some text."
MESSAGE_TOO_LONG = ("Your message is {length:,} characters; the limit is {limit:,}. "
                    "Nothing was saved. Please shorten it or send it in parts.")
ATTACHMENTS_ONLY = "I can only read text, not attachments. Please type your message."
PROMPT_TOO_LONG = ("Your message is too long for the model's context ({needed:,} tokens with the persona; "
                   "{budget:,} fit). Nothing was saved. Please shorten it.")
NOTHING_TO_SAY = "(The model gave an empty answer. Try rephrasing your message.)"
GENERATION_FAILED = "Sorry, I could not write a reply: {reason} Please try again in a moment."
BUSY = ("I'm busy right now: {waiting} replies are waiting ahead of yours. "
        "Please try again in a minute. (Your message is kept in the conversation.)")
STORAGE_FAILED = "Sorry, I could not reach my memory (the database) just now. Please try again in a moment."
CUT_SHORT_TIMEOUT = "This answer was cut short: the model ran out of time."
CUT_SHORT_RESET = "This answer was cut short: the channel's history was reset."
TURNS_DROPPED = "{count} older message(s) no longer fit in my memory and were left out of this answer."

PERSONA_EMPTY = "A persona needs some text. To go back to the default, use /persona reset."
PERSONA_TOO_LONG = "That persona is {length:,} characters; the limit is {limit:,}. The persona was not changed."
PERSONA_SET = "Persona set ({length:,} characters). It applies to every channel of this server from the next message."
PERSONA_RESET = "Persona reset to the default."
PERSONA_SHOW_CUSTOM = "This server's persona:\n{persona}"
PERSONA_SHOW_DEFAULT = "This server uses the default persona:\n{persona}"

HISTORY_RESET = "History cleared: {count} message(s) forgotten in this channel."
HISTORY_EMPTY = "This channel has no history yet."
AUTOREPLY_ON = "Auto-reply is on: I will answer every message in this channel."
AUTOREPLY_OFF = "Auto-reply is off: mention me or reply to me to talk."

# Discord ----------------------------------------------------------------

SERVER_ONLY = "This command only works in a server, not in direct messages."
NEEDS_PERMISSION = "You need the {permission} permission to use this command."
COMMAND_FAILED = "Sorry, that command failed on my side. Please try again in a moment."

# Said to the operator who starts `python -m bot run` (printed after "error: ").
DISCORD_TOKEN_MISSING = (
    "DISCORD_TOKEN is not set. Create a bot at https://discord.com/developers/applications "
    "(Bot > Reset Token), copy its token, and run DISCORD_TOKEN=... python -m bot run "
    "(or put DISCORD_TOKEN=... in a .env file in this folder).")
DISCORD_TOKEN_REJECTED = (
    "Discord rejected DISCORD_TOKEN. Copy a fresh token from https://discord.com/developers/applications "
    "(your application > Bot > Reset Token) and try again.")
DISCORD_INTENT_MISSING = (
    "Discord refused the Message Content intent. Switch it on at https://discord.com/developers/applications "
    "(your application > Bot > Privileged Gateway Intents > Message Content Intent) and start again.")
DISCORD_UNREACHABLE = "Could not reach Discord ({reason}). Check this machine's network connection and try again."

# Load and restarts -------------------------------------------------------

SLOW_DOWN = ("You're sending messages faster than I can answer. Try again in {seconds} second(s). "
             "(That message was not saved.)")
RESTARTING = "I'm restarting, so I could not answer that. Please send it again in a minute."
CUT_SHORT_RESTART = "I'm restarting; this answer was cut short."

# Privacy -----------------------------------------------------------------

FORGOT_YOU = ("Done: I erased {count} stored message(s) of yours: everything you wrote to me in every "
              "server and channel, and our direct-message conversations. My answers in server channels stay.")
QUEUED = "(Many people are talking to me at once: you are number {place} in line. Your answer is coming.)"
