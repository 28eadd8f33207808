"""Build INTERACTION_CREATE payloads for slash commands (type 2).

The fake plays Discord's role of turning a user's slash-command invocation
into an interaction: it looks the command up among those the bot registered
(``PUT /applications/{id}/commands``) to fill in the command ID, guild scope
and option types, and resolves user/channel/role options into ``resolved``.
Commands that were never synced still work (discord.py's CommandTree finds
callbacks by name); option types are then inferred from Python values.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

from . import payloads
from . import permissions as perms
from .models import FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser
from .state import FakeState, LookupFailed

APPLICATION_COMMAND = 2
APPLICATION_COMMAND_AUTOCOMPLETE = 4

SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER = 3, 4, 5, 6, 7, 8, 9, 10

# Interaction context types.
CONTEXT_GUILD, CONTEXT_BOT_DM = 0, 1

Options = Union[Dict[str, Any], Sequence[dict], None]


class CommandNotPermitted(Exception):
    """Discord would not let this member use the command at all
    (``default_member_permissions`` not satisfied), so no interaction is sent."""


def build_command_interaction(
    state: FakeState,
    *,
    interaction_id: int,
    token: str,
    channel: FakeChannel,
    user: FakeUser,
    command: str,
    options: Options = None,
    locale: str = "en-US",
    permissions: Optional[int] = None,
    app_permissions: Optional[int] = None,
    enforce_default_permissions: bool = True,
    focused: Optional[str] = None,
) -> dict:
    """``command`` is the full invocation path: ``"ping"``, ``"config set"``
    (subcommand) or ``"admin user ban"`` (group + subcommand). With ``focused`` (an option's
    name), the user is typing that option: an autocomplete interaction (type 4), in which the
    focused option is marked and its partial value is always a string."""
    path = command.split()
    guild = state.guild_of(channel)
    registered = state.find_command(path[0], guild.id if guild else None)
    resolved = _Resolved(state, guild, channel)
    declared = _declared_options(registered, path[1:])
    data: Dict[str, Any] = {
        "id": str(registered["id"]) if registered else str(_unsynced_id(state, path[0])),
        "name": path[0],
        "type": 1,
        "options": _nest(path[1:], _focus(_build_options(options, declared, resolved), focused)),
    }
    if registered and registered.get("guild_id"):
        data["guild_id"] = registered["guild_id"]
    if resolved.data:
        data["resolved"] = resolved.data

    member_perms = permissions if permissions is not None else state.permissions_in(channel, user.id)
    bot_perms = app_permissions if app_permissions is not None else state.permissions_in(channel, state.bot.id)
    if enforce_default_permissions and guild is not None and registered:
        _check_default_permissions(registered, member_perms)

    payload = {
        "id": str(interaction_id),
        "application_id": str(state.application_id),
        "type": APPLICATION_COMMAND if focused is None else APPLICATION_COMMAND_AUTOCOMPLETE,
        "data": data,
        "channel_id": str(channel.id),
        "channel": payloads.channel(channel, permissions=member_perms),
        "token": token,
        "version": 1,
        "app_permissions": str(bot_perms),
        "locale": locale,
        "entitlements": [],
        "entitlement_sku_ids": [],
        "attachment_size_limit": payloads.ATTACHMENT_SIZE_LIMIT,  # required by discord.py
    }
    if guild is not None:
        member = state.get_member(guild, user.id)
        payload.update(
            guild_id=str(guild.id),
            guild={"id": str(guild.id), "locale": guild.preferred_locale, "features": []},
            guild_locale=guild.preferred_locale,
            member=payloads.member(member, permissions=member_perms),
            authorizing_integration_owners={"0": str(guild.id)},
            context=CONTEXT_GUILD,
        )
    else:
        payload.update(
            user=payloads.user(user),
            authorizing_integration_owners={"0": str(user.id)},
            context=CONTEXT_BOT_DM,
        )
    return payload


def _focus(options: List[dict], focused: Optional[str]) -> List[dict]:
    for option in options:
        if option["name"] == focused:
            option.update(focused=True, value=str(option["value"]))
    return options


def _unsynced_id(state: FakeState, name: str) -> int:
    if name not in state.unsynced_command_ids:
        state.unsynced_command_ids[name] = state.new_id()
    return state.unsynced_command_ids[name]


def _check_default_permissions(registered: dict, member_perms: int) -> None:
    required = registered.get("default_member_permissions")
    if required is not None and not perms.has_all(member_perms, int(required)):
        raise CommandNotPermitted(f"/{registered['name']} needs permissions {required}; member has {member_perms}")


def _declared_options(registered: Optional[dict], sub_path: List[str]) -> List[dict]:
    """Options the registered command declares at the invoked (sub)command."""
    options = (registered or {}).get("options") or []
    for name in sub_path:
        options = next((o.get("options") or [] for o in options if o["name"] == name), [])
    return options


def _nest(sub_path: List[str], leaf_options: List[dict]) -> List[dict]:
    """Wrap leaf options in subcommand (type 1) / group (type 2) options."""
    if not sub_path:
        return leaf_options
    if len(sub_path) == 1:
        return [{"type": SUB_COMMAND, "name": sub_path[0], "options": leaf_options}]
    group, sub = sub_path
    return [{"type": SUB_COMMAND_GROUP, "name": group, "options": _nest([sub], leaf_options)}]


def _build_options(options: Options, declared: List[dict], resolved: "_Resolved") -> List[dict]:
    if options is None:
        return []
    if not isinstance(options, dict):
        return [dict(o) for o in options]  # already raw option objects
    declared_types = {o["name"]: o["type"] for o in declared}
    built = []
    for name, value in options.items():
        if isinstance(value, dict) and "type" in value:
            built.append({"name": name, **value})
            continue
        type_ = declared_types.get(name) or _infer_type(value)
        built.append({"name": name, "type": type_, "value": resolved.add(value, type_)})
    return built


def _infer_type(value: Any) -> int:
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, (FakeUser, FakeMember)):
        return USER
    if isinstance(value, FakeChannel):
        return CHANNEL
    if isinstance(value, FakeRole):
        return ROLE
    return STRING


class _Resolved:
    """Accumulates the interaction's ``data.resolved`` map."""

    def __init__(self, state: FakeState, guild: Optional[FakeGuild], channel: FakeChannel) -> None:
        self._state = state
        self._guild = guild
        self._channel = channel
        self.data: Dict[str, Dict[str, dict]] = {}

    def add(self, value: Any, type_: int) -> Any:
        """Record ``value`` if it is an entity; return the wire ``value``."""
        if isinstance(value, (FakeUser, FakeMember)):
            self._add_user(value.user if isinstance(value, FakeMember) else value)
        elif isinstance(value, FakeChannel):
            perms_here = self._state.permissions_in(value, self._state.bot.id)
            self.data.setdefault("channels", {})[str(value.id)] = payloads.channel(value, permissions=perms_here)
        elif isinstance(value, FakeRole):
            self.data.setdefault("roles", {})[str(value.id)] = payloads.role(value)
        else:
            return value
        return str(value.id)

    def _add_user(self, user: FakeUser) -> None:
        self.data.setdefault("users", {})[str(user.id)] = payloads.user(user)
        member = self._guild.members.get(user.id) if self._guild else None
        if member is not None:
            member_perms = self._state.permissions_in(self._channel, user.id)
            self.data.setdefault("members", {})[str(user.id)] = payloads.member(
                member, with_user=False, permissions=member_perms
            )


__all__ = ["build_command_interaction", "CommandNotPermitted", "LookupFailed"]
