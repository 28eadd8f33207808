"""Interaction callbacks and the interaction webhook (original + followups).

These routes take no bot token, only the interaction token in the URL, just
like Discord. Behaviour mirrored from Discord's docs:

* an interaction can be acknowledged once (else 400, code 40060);
* callback type 4 creates the "original response" message, type 5 a loading
  ("thinking") placeholder, which a later edit of ``@original`` or the first
  followup fills in;
* ephemeral messages (flag 64) are never dispatched over the Gateway.

discord.py 2.7 always sends ``?with_response=true``, so the callback answers
with an InteractionCallbackResponse; without it we answer 204 like Discord.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

from aiohttp import web

from . import messages
from .http_util import (
    ALREADY_ACKNOWLEDGED,
    UNKNOWN_INTERACTION,
    UNKNOWN_MESSAGE,
    UNKNOWN_WEBHOOK,
    ApiError,
    json_response,
    no_content,
    not_found,
)
from .ids import now_iso
from .models import FakeChannel, FakeInteraction
from .rest import recorded

if TYPE_CHECKING:
    from .server import FakeDiscord

CHANNEL_MESSAGE_WITH_SOURCE = 4
DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE = 5
DEFERRED_UPDATE_MESSAGE = 6
UPDATE_MESSAGE = 7


def _truthy(value: Optional[str]) -> bool:
    return (value or "").lower() in ("1", "true")


class WebhookRoutes:
    def __init__(self, fake: "FakeDiscord") -> None:
        self.fake = fake
        self.state = fake.state

    def routes(self) -> List[Tuple[str, str, object]]:
        return [
            ("POST", "/interactions/{interaction_id}/{token}/callback", self.callback),
            ("POST", "/webhooks/{app_id}/{token}", self.create_followup),
            ("GET", "/webhooks/{app_id}/{token}/messages/{message_id}", self.get_webhook_message),
            ("PATCH", "/webhooks/{app_id}/{token}/messages/{message_id}", self.edit_webhook_message),
            ("DELETE", "/webhooks/{app_id}/{token}/messages/{message_id}", self.delete_webhook_message),
        ]

    # ------------------------------------------------------------ callback
    async def callback(self, request: web.Request) -> web.Response:
        interaction = self.fake.interactions.get(int(request.match_info["interaction_id"]))
        if interaction is None or interaction.token != request.match_info["token"]:
            raise not_found(UNKNOWN_INTERACTION, "interaction")
        if interaction.acknowledged:
            raise ApiError(400, ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged.")
        rec = recorded(request)
        body = rec.json or {}
        interaction.callbacks.append(body)

        kind = body.get("type")
        data = body.get("data") or {}
        message = None
        if kind in (CHANNEL_MESSAGE_WITH_SOURCE, DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE):
            message = self._create_response_message(interaction, kind, data, rec.files)
            interaction.original_message_id = int(message["id"])
        elif kind == UPDATE_MESSAGE and "message" in interaction.payload:
            message = self._update_component_message(interaction, data)

        if not _truthy(request.query.get("with_response")):
            return no_content()
        return json_response(self._callback_response(interaction, kind, message))

    def _create_response_message(self, interaction: FakeInteraction, kind: int, data: dict, files) -> dict:
        channel = self._channel_of(interaction)
        flags = int(data.get("flags") or 0) & messages.EPHEMERAL
        if kind == DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE:
            flags |= messages.LOADING
            data = {}
        message = self._build_bot_message(interaction, channel, data, files, flags)
        self.state.store_message(message)
        self._publish_unless_ephemeral("MESSAGE_CREATE", message)
        return message

    def _update_component_message(self, interaction: FakeInteraction, data: dict) -> Optional[dict]:
        target = self.state.messages.get(int(interaction.payload["message"]["id"]))
        if target is not None:
            messages.apply_edit(target, data, edited_at=now_iso())
            self._publish_unless_ephemeral("MESSAGE_UPDATE", target)
        return target

    def _callback_response(self, interaction: FakeInteraction, kind: int, message: Optional[dict]) -> dict:
        flags = int((message or {}).get("flags") or 0)
        response = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.payload["type"],
                "response_message_loading": bool(flags & messages.LOADING),
                "response_message_ephemeral": bool(flags & messages.EPHEMERAL),
            }
        }
        if message is not None:
            response["interaction"]["response_message_id"] = message["id"]
            response["resource"] = {"type": kind, "message": message}
        return response

    # ------------------------------------------------------------- webhook
    async def create_followup(self, request: web.Request) -> web.Response:
        interaction = self._interaction_for_webhook(request)
        rec = recorded(request)
        body = rec.json or {}
        original = self._original(interaction, required=False)
        if original is not None and int(original["flags"]) & messages.LOADING:
            # The first followup after a deferral fills in the "thinking" message.
            message = self._finish_loading(original, body, rec.files)
        else:
            flags = int(body.get("flags") or 0) & messages.EPHEMERAL
            message = self._build_bot_message(interaction, self._channel_of(interaction), body, rec.files, flags)
            self.state.store_message(message)
            interaction.followup_message_ids.append(int(message["id"]))
            self._publish_unless_ephemeral("MESSAGE_CREATE", message)
        if not _truthy(request.query.get("wait")):
            return no_content()
        return json_response(message)

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        interaction = self._interaction_for_webhook(request)
        return json_response(self._webhook_message(interaction, request.match_info["message_id"]))

    async def edit_webhook_message(self, request: web.Request) -> web.Response:
        interaction = self._interaction_for_webhook(request)
        message = self._webhook_message(interaction, request.match_info["message_id"])
        rec = recorded(request)
        body = dict(rec.json or {})
        if int(message["flags"]) & messages.LOADING:
            return json_response(self._finish_loading(message, body, rec.files))
        channel = self._channel_of(interaction)
        if "attachments" in body:
            body["attachments"] = self.fake._attachments_after_edit(channel, message, body, rec.files)
        body.pop("flags", None)  # flags cannot be changed by an edit
        messages.apply_edit(message, body, edited_at=now_iso())
        self._publish_unless_ephemeral("MESSAGE_UPDATE", message)
        return json_response(message)

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        interaction = self._interaction_for_webhook(request)
        message = self._webhook_message(interaction, request.match_info["message_id"])
        self.fake._delete_stored_message(message)
        return no_content()

    # ------------------------------------------------------------- helpers
    def _interaction_for_webhook(self, request: web.Request) -> FakeInteraction:
        token = request.match_info["token"]
        interaction = next((i for i in self.fake.interactions.values() if i.token == token), None)
        app_ok = request.match_info["app_id"] == str(self.state.application_id)
        # The webhook only exists once the interaction has been acknowledged.
        if interaction is None or not app_ok or not interaction.acknowledged:
            raise not_found(UNKNOWN_WEBHOOK, "Webhook")
        return interaction

    def _original(self, interaction: FakeInteraction, *, required: bool = True) -> Optional[dict]:
        message_id = interaction.original_message_id
        message = self.state.messages.get(message_id) if message_id else None
        if message is None and required:
            raise not_found(UNKNOWN_MESSAGE, "Message")
        return message

    def _webhook_message(self, interaction: FakeInteraction, message_id: str) -> dict:
        if message_id == "@original":
            return self._original(interaction)
        if int(message_id) not in interaction.followup_message_ids + [interaction.original_message_id]:
            raise not_found(UNKNOWN_MESSAGE, "Message")
        message = self.state.messages.get(int(message_id))
        if message is None:
            raise not_found(UNKNOWN_MESSAGE, "Message")
        return message

    def _finish_loading(self, message: dict, body: dict, files) -> dict:
        channel, _ = self.state.find_channel(int(message["channel_id"]))
        message["attachments"] = self.fake._attachments_from_upload(channel, body, files)
        changes = {k: body[k] for k in ("content", "embeds", "components") if k in body}
        messages.apply_edit(message, changes, edited_at=now_iso())
        message["edited_timestamp"] = None  # filling in a deferral is not an "edit"
        message["flags"] = int(message["flags"]) & ~messages.LOADING
        self._publish_unless_ephemeral("MESSAGE_UPDATE", message)
        return message

    def _channel_of(self, interaction: FakeInteraction) -> FakeChannel:
        channel, _ = self.state.find_channel(int(interaction.payload["channel_id"]))
        return channel

    def _build_bot_message(
        self, interaction: FakeInteraction, channel: FakeChannel, data: dict, files, flags: int
    ) -> dict:
        payload = interaction.payload
        invoker = payload.get("member", {}).get("user") or payload["user"]
        return messages.build_message(
            self.state,
            channel=channel,
            author=self.state.bot,
            content=data.get("content") or "",
            allowed_mentions=data.get("allowed_mentions"),
            attachments=self.fake._attachments_from_upload(channel, data, files),
            embeds=data.get("embeds") or [],
            components=data.get("components") or [],
            flags=flags,
            tts=bool(data.get("tts")),
            message_type=messages.CHAT_INPUT_COMMAND,
            extra={
                "webhook_id": str(self.state.application_id),
                "application_id": str(self.state.application_id),
                "interaction_metadata": {
                    "id": str(interaction.id),
                    "type": payload["type"],
                    "user": invoker,
                    "authorizing_integration_owners": payload.get("authorizing_integration_owners", {}),
                    "name": payload["data"]["name"],
                    "command_type": payload["data"].get("type", 1),
                },
                "interaction": {
                    "id": str(interaction.id),
                    "type": payload["type"],
                    "name": payload["data"]["name"],
                    "user": invoker,
                },
            },
        )

    def _publish_unless_ephemeral(self, event: str, message: dict) -> None:
        if not int(message.get("flags") or 0) & messages.EPHEMERAL:
            self.fake._publish_message(event, message)
