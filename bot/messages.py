"""Every sentence the bot says to users, in one place, so wording stays consistent
and can be changed (or translated) without hunting through the code."""


def counted(template: str, count: int, name: str = "count") -> str:
    """`template` with the count filled in as `name`, and its "(s)" made right: "1 message",
    "3 messages"."""
    return template.format(**{name: count}).replace("(s)", "" if count == 1 else "s")


EMPTY_MESSAGE = "Your message is empty, so there is nothing for me to answer. Type some text."
MESSAGE_TOO_LONG = ("Your message is {length:,} characters; the limit is {limit:,}. "
                    "Nothing was saved. Please shorten it or send it in parts.")
ATTACHMENTS_ONLY = "I can only read text, not attachments. Please type your message."
ATTACHMENTS_NOT_READ = "I can read text only, not attachments: I answered your words alone."
PROMPT_TOO_LONG = ("Your message is too long for the model's context ({needed:,} tokens with the persona; "
                   "{budget:,} fit). Nothing was saved. Please shorten it.")
NOTHING_TO_SAY = "(The model gave an empty answer. Try rephrasing your message.)"
GENERATION_FAILED = "Sorry, I could not write a reply: {reason} Please try again in a moment."
BUSY = ("I'm busy right now ({waiting} waiting ahead of yours), so I could not answer that. "
        "Please send it again in a minute.")
STORAGE_FAILED = "Sorry, I could not reach my memory (the database) just now. Please try again in a moment."
CUT_SHORT_TIMEOUT = "This answer was cut short: the model ran out of time."
CUT_SHORT_RESET = "This answer was cut short: the channel's history was reset."
CUT_SHORT_STOPPED = "This answer was cut short: you stopped it."
CUT_SHORT_SERVER = "This answer was cut short: the model server stopped answering."
SERVER_PROMPT_TOO_LONG = ("Your message is too long for the model server's context ({context:,} tokens), so I "
                          "could not answer it and did not keep it. Please send a shorter one.")
TURNS_DROPPED = "To fit my memory, I left {count} older message(s) out of this answer."

PERSONA_EMPTY = "A persona needs some text. To go back to the default, use /persona reset."
PERSONA_EMPTY_CHANNEL = ("A persona needs some text. To drop this channel's own persona, use /persona reset with "
                         "the channel scope.")
PERSONA_TOO_LONG = "That persona is {length:,} characters; the limit is {limit:,}. The persona was not changed."
PERSONA_SET = ("Persona set ({length:,} characters). It applies to every channel of this server without a persona "
               "of its own, from the next message.")
PERSONA_SET_CHANNEL = ("This channel's persona set ({length:,} characters). It overrides the server's persona in this "
                       "channel from the next message.")
PERSONA_RESET = "Persona reset to the default. Channels with a persona of their own keep it."
PERSONA_RESET_CHANNEL = "This channel's own persona is removed: {applies} applies here again."
PERSONA_CHANNEL_NONE = "This channel has no persona of its own: {applies} applies here."
APPLIES_THREADS_CHANNEL = "its channel's persona (this is a thread: set or reset that one in the channel itself)"
APPLIES_SERVER = "the server's persona"
APPLIES_DEFAULT = "the default persona"
PERSONA_SCOPE_UNKNOWN = 'There is no persona scope "{scope}": use "server" or "channel".'
PERSONA_SHOW_CHANNEL = "This channel's own persona (it overrides the server's here):\n{persona}"
PERSONA_SHOW_THREADS_CHANNEL = ("This thread's channel's own persona (this thread has none of its own, so it follows "
                                "its channel):\n{persona}")
PERSONA_SHOW_CUSTOM = "This server's persona:\n{persona}"
PERSONA_SHOW_DEFAULT = "This server uses the default persona:\n{persona}"

HISTORY_RESET = "History cleared: {count} message(s) forgotten in this channel."
HISTORY_EMPTY = "This channel has no history yet."
AUTOREPLY_ON = "Auto-reply is on: I will answer every message in this channel."
AUTOREPLY_OFF = "Auto-reply is off: mention me or reply to me to talk."
CANNOT_ANSWER_HERE = ("But I cannot answer here yet: I lack the {permission} permission {where}. A server admin "
                      "can give it to my role (channel settings > Permissions).")
IN_THIS_CHANNEL = "in this channel"
IN_THREADS_CHANNEL = "in this thread's channel (a thread takes its channel's permissions)"
CANNOT_ANSWER_LOCKED = ("But I cannot answer here: this thread is locked, and only members with Manage Threads may "
                        "post in it. A moderator can unlock it.")

# Discord ----------------------------------------------------------------

SERVER_ONLY = "This command only works in a server, not in direct messages."
NEEDS_PERMISSION = "You need the {permission} permission to use this command."
COMMAND_FAILED = "Sorry, that command failed on my side. Please try again in a moment."

# Said to the operator who starts `python -m bot run` (printed after "error: ").
DISCORD_TOKEN_MISSING = (
    "DISCORD_TOKEN is not set. Create a bot at https://discord.com/developers/applications "
    "(Bot > Reset Token), copy its token, and run DISCORD_TOKEN=... python -m bot run "
    "(or put DISCORD_TOKEN=... in a .env file in this folder).")
DISCORD_TOKEN_NAMED_OTHERWISE = " (.env has {names}, but the bot reads DISCORD_TOKEN.)"
DISCORD_TOKEN_MALFORMED = (
    "DISCORD_TOKEN contains {character}, which no Discord token has. Paste only the token itself, as copied "
    "from https://discord.com/developers/applications (your application > Bot > Reset Token).")
DISCORD_TOKEN_REJECTED = (
    "Discord rejected DISCORD_TOKEN. Copy a fresh token from https://discord.com/developers/applications "
    "(your application > Bot > Reset Token) and try again.")
DISCORD_INTENT_MISSING = (
    "Discord refused the Message Content intent. Switch it on at https://discord.com/developers/applications "
    "(your application > Bot > Privileged Gateway Intents > Message Content Intent, then Save Changes) and "
    "start again.")
DISCORD_INTENT_LOOKS_OFF = (
    "Discord shows the Message Content intent switched off for this bot: it will not be able to connect. "
    "Switch it on at https://discord.com/developers/applications (your application > Bot > Privileged "
    "Gateway Intents > Message Content Intent, then Save Changes); if it is on, ignore this.")
DISCORD_UNREACHABLE = "Could not reach Discord ({reason}). Check this machine's network connection and try again."

# Load and restarts -------------------------------------------------------

SLOW_DOWN = ("You're sending messages faster than I can answer. Try again in {seconds} second(s). "
             "(That message was not saved.)")
RESTARTING = "I'm restarting, so I could not answer that. Please send it again in a minute."
CUT_SHORT_RESTART = "I'm restarting; this answer was cut short."
WIPED_BEFORE_ANSWER = ("That message was not answered: before its turn came, this conversation was reset or its "
                       "author asked to be forgotten.")

# Privacy -----------------------------------------------------------------

FORGOT_YOU = ("Done: I erased {count} stored message(s) of yours: everything you wrote to me in every "
              "server and channel, and our direct-message conversations. My answers in server channels stay. "
              "What you write from now on stays out of training-data exports (/optin undoes that).")
QUEUED = "(Many people are talking to me at once: you are number {place} in line. Your answer is coming.)"

# Training-data export ------------------------------------------------------

OPTED_OUT = ("Done: nothing you write will be included when this bot's conversations are exported to "
             "train a model. I still answer you as before. Use /optin to undo this.")
OPTED_IN = "Done: your messages may again be included in training-data exports. Use /optout to undo this."
NOT_OPTED_OUT = "You had not opted out, so nothing changed. Use /optout to keep your messages out of exports."
EXPORT_DATES_REVERSED = "The start date {since} is after the end date {until}. Nothing was exported."
EXPORT_BAD_DATE = "{problem}. Nothing was exported."
EXPORT_EMPTY = ("There is nothing to export{scope}: no conversation with an answer from me "
                "(people who opted out are left out).")
EXPORT_READY = ("Here is the export: {summary}. Authors are pseudonymised. Train on it with "
                "`python -m bot finetune --data {filename} --out DIR`.")
EXPORT_TOO_BIG = ("The export is {size:,} bytes even compressed, over Discord's {limit:,}-byte limit for this "
                  "file. Export one channel or fewer days, or ask the bot's operator to run `python -m bot export`.")

# Adapters ----------------------------------------------------------------

THINKING_ON = ("Done: from the next message, the bot thinks before it answers in this server (slower, "
               "sometimes better). Its thoughts are never posted or kept. Models that cannot reason ignore this.")
THINKING_OFF = "Done: from the next message, the bot answers in this server without thinking first."
THINKING_CANNOT_NOW = "(The model in use now cannot think, so its answers do not change.)"
THINKING_IS_ON = "Thinking first: on (/persona thinking off answers at once)."
THINKING_IS_OFF = "Thinking first: off (/persona thinking on lets the model reason before it answers)."
THINKING_CANNOT = "Thinking first: on, but the model in use cannot think, so it answers at once."
ADAPTER_SET = "Done: from the next message, this server's replies are written by {adapter}."
ADAPTER_UNKNOWN = 'There is no adapter named "{name}"; nothing changed.'
ADAPTER_CHOOSE = "Pick one of: {names} (\"default\" is the bot's usual model, \"base\" the model without any adapter)."
ADAPTERS_NONE = ("This bot has no fine-tuned adapters to choose from; its operator can add some "
                 "([model] adapters_dir).")
ADAPTER_IN_USE = "Model: {adapter}. Change it with /persona adapter."
ADAPTER_NAMED = 'the fine-tuned adapter "{name}"'
ADAPTER_DEFAULT = 'the default fine-tuned adapter ("{name}")'
ADAPTER_NONE = "the base model, without an adapter"

# Status and metrics ----------------------------------------------------------

STATUS = ("Model: {model} ({context:,} tokens of context{context_source})\n"
          "Backend: {backend}\n"
          "Queue: {queue} ({waiting_turn} waiting for their channel's turn, {waiting} waiting for the model, "
          "{writing} being written)\n"
          "Uptime: {uptime}\n"
          "Since start: {answered:,} answered, {refused:,} refused, {failed:,} failed")
STATUS_BACKEND_BATCHING = "local batching engine (up to {max_batch} replies at once)"
STATUS_BACKEND_WORKER = "local one-at-a-time worker"
STATUS_BACKEND_REMOTE = "OpenAI-compatible server at {url}"
STATUS_PROMPT_CACHES = "Prompt caches kept: {count:,} channel(s)"
STATUS_SLOTS = "Slots in use: {used} of {slots}"
STATUS_SHARD = "Shard: {shard} of {count}"
STATUS_UNSHARDED = "Shard: none (one connection for every server)"
STATUS_SERVERS = "Servers: {count:,}"
STATUS_LATENCY = "Gateway latency: {ms:,.0f} ms"
# Said to the operator who starts `python -m bot run` (printed after "error: ").
METRICS_CANNOT_LISTEN = ("Cannot serve the Prometheus metrics on {address} ({reason}). Set [metrics] port "
                         "(or BOT_METRICS_PORT) to a free port, or stop what uses that one.")

# The terminal chat ---------------------------------------------------------

TERMINAL_UNKNOWN_COMMAND = "Unknown command {command}. Type /help for the commands."
TERMINAL_PERSONA_ACTIONS = ('There is no /persona {action}: use /persona show, set, reset, adapter or thinking '
                            '(/help says more).')
TERMINAL_PERSONA_RESET_SCOPE = ('There is no persona scope "{scope}": use /persona reset (the terminal\'s) or '
                                '/persona reset channel (this conversation\'s own).')
TERMINAL_ANSWER_FAILED = "Sorry, something went wrong while answering that (the log says what); the chat goes on."
TERMINAL_THINKING_ON_OFF = "Use /persona thinking on or /persona thinking off."
