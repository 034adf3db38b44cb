"""`dvcflow notify`: a Prefect automation that tells a webhook (or Slack) how this repository's runs end.

Provides:
- `check_request`, `check_list_or_remove`: the flags checked before anything is registered (a
  `UsageError` otherwise).
- `set_notification`: creates the automation, or updates the one of that name in place.
- `list_notifications`, `remove_notification`.

The automation reacts to the flow-run state events (`prefect.flow-run.Failed`, ...) of runs carrying the
repository's tag (`api.tags.repo_tag`). The URL lives in a Prefect block (a `SecretStr`): the API and the
UI show it masked, and dvcflow prints it shortened (`redact`). The server's `triggers` and `actions`
services do the work, whether or not any dvcflow process runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dvcflow.core.errors import UsageError
from dvcflow.dvc import repository

STATES = {"failed": "Failed", "crashed": "Crashed", "completed": "Completed", "cancelled": "Cancelled"}
DEFAULT_ON = ("failed", "crashed")
WEBHOOK = "webhook"
SLACK = "slack"


@dataclass(frozen=True)
class NotifyRequest:
    root: Path
    name: str
    kind: str  # WEBHOOK or SLACK
    url: str
    states: tuple[str, ...]  # Prefect state names, e.g. ("Failed", "Crashed")


@dataclass(frozen=True)
class Notification:
    name: str
    kind: str
    target: str  # the URL, redacted
    states: tuple[str, ...]
    enabled: bool
    id: str
    created: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "target": self.target,
            "on": [state.lower() for state in self.states],
            "enabled": self.enabled,
            "id": self.id,
        }


def redact(url: str) -> str:
    """Scheme and host only: the path, query and credentials of a webhook URL are often its token."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    rest = url.split(parts.netloc, 1)[-1] if parts.netloc else ""
    hidden = rest.strip("/") or parts.username or parts.password
    return f"{parts.scheme}://{host}/" + ("***" if hidden else "")


def _parse_states(on: str | None) -> tuple[str, ...]:
    words = DEFAULT_ON if on is None else tuple(word.strip().lower() for word in on.split(","))
    for word in words:
        if word not in STATES:
            raise UsageError(f"unknown --on state {word!r} (choose from {', '.join(STATES)})")
    return tuple(dict.fromkeys(STATES[word] for word in words))


def _check_url(flag: str, url: str) -> None:
    """Never echo the value: without a host, a token would be printed whole (redact needs the host)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = repr(redact(url)) if parts.scheme and parts.hostname else "a value without scheme://host"
        raise UsageError(f"{flag} must be an http(s) URL such as https://host/path, got {shown}")


def check_request(
    repo: Path | None, *, webhook: str | None, slack: str | None, on: str | None, name: str | None
) -> NotifyRequest:
    """Refuse bad flags before Prefect is contacted."""
    if (webhook is None) == (slack is None):
        raise UsageError("give exactly one of --webhook URL, --slack URL, --list or --remove NAME")
    kind, url = (WEBHOOK, webhook) if webhook is not None else (SLACK, slack)
    assert url is not None
    _check_url(f"--{kind}", url)
    states = _parse_states(on)
    root = repository.find_repo_root(repo)
    chosen = name if name is not None else f"{root.name}-{kind}"
    if not chosen.strip():
        raise UsageError("--name must not be empty")
    return NotifyRequest(root, chosen, kind, url, states)


def check_list_or_remove(
    list_: bool,
    remove: str | None,
    *,
    webhook: str | None,
    slack: str | None,
    on: str | None,
    name: str | None,
) -> None:
    """`--list` and `--remove NAME` stand alone: refuse them with each other or with a setting flag."""
    extra = [
        flag
        for flag, used in (("--webhook", webhook), ("--slack", slack), ("--on", on), ("--name", name))
        if used is not None
    ]
    if (list_ and remove is not None) or extra:
        raise UsageError(f"{'--list' if list_ else '--remove'} takes no {extra[0] if extra else '--remove'}")


def _block_name(root: Path, name: str) -> str:
    """One block per (repository, notification): a slug, as Prefect requires for block names."""
    from dvcflow.api.tags import repo_tag

    digest = hashlib.sha1(f"{repo_tag(root)}/{name}".encode(), usedforsecurity=False).hexdigest()[:16]
    return f"dvcflow-notify-{digest}"


def _payload(root: Path) -> str:
    """The JSON message, as a Jinja template the server renders for the run that triggered it.

    The link is built from this client's UI address: the server's own `ui_url` filter knows it only
    when the server was given PREFECT_UI_URL.
    """
    from dvcflow.api.links import flow_run_link

    prefix = flow_run_link("")
    fields = {
        "flow": "flow.name",
        "run": "flow_run.name",
        "deployment": "deployment.name",  # none for a `run-a` run
        "state": "flow_run.state.name",
        "reason": "flow_run.state.message",
        "link": f"{json.dumps(prefix)} ~ flow_run.id" if prefix else "flow_run | ui_url",
    }
    rendered = {"repository": _verbatim(json.dumps(str(root)))}
    rendered.update(
        (key, f"{{{{ ({value}) | default(none, true) | tojson }}}}") for key, value in fields.items()
    )
    return "{" + ", ".join(f'"{key}": {value}' for key, value in rendered.items()) + "}"


def _verbatim(text: str) -> str:
    """`text` kept out of the server's Jinja: a folder may be named `{{ ... }}` or `{% ... %}`."""
    return "{% raw %}" + text + "{% endraw %}"


SLACK_SUBJECT = "{{ flow_run.name }} ({{ flow.name }}): {{ flow_run.state.name }}"
SLACK_BODY = (
    "Repository: {repo}\nFlow run {{{{ flow_run.name }}}} of {{{{ flow.name }}}} ended "
    "{{{{ flow_run.state.name }}}}.\n{{{{ flow_run.state.message or '' }}}}\n{{{{ flow_run | ui_url }}}}"
)


def _save_block(request: NotifyRequest) -> Any:
    """The URL in a block (masked by the API); returns the block document id."""
    from pydantic import SecretStr

    if request.kind == SLACK:
        from prefect.blocks.notifications import SlackWebhook

        slack = SlackWebhook(url=SecretStr(request.url))
        return slack.save(_block_name(request.root, request.name), overwrite=True)
    from prefect.blocks.core import Block
    from prefect.blocks.webhook import Webhook
    from prefect.types import SecretDict

    hook: Block = Webhook(
        method="POST", url=SecretStr(request.url), headers=SecretDict({"Content-Type": "application/json"})
    )
    return hook.save(_block_name(request.root, request.name), overwrite=True)


def _automation(request: NotifyRequest, block_id: Any) -> Any:
    from prefect.events.actions import CallWebhook, SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    from dvcflow.api.tags import repo_tag

    trigger = EventTrigger(
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={
            "prefect.resource.role": "tag",
            "prefect.resource.id": f"prefect.tag.{repo_tag(request.root)}",
        },
        expect={f"prefect.flow-run.{state}" for state in request.states},
        posture=Posture.Reactive,
        threshold=1,
    )
    action = (
        SendNotification(
            block_document_id=block_id,
            subject=SLACK_SUBJECT,
            body=SLACK_BODY.format(repo=_verbatim(str(request.root))),
        )
        if request.kind == SLACK
        else CallWebhook(block_document_id=block_id, payload=_payload(request.root))
    )
    return AutomationCore(
        name=request.name,
        description=f"dvcflow notify ({request.kind} {redact(request.url)}) for {request.root}",
        trigger=trigger,
        actions=[action],
        enabled=True,
    )


def set_notification(request: NotifyRequest) -> Notification:
    """Create the automation, or update the one of this name for this repository in place."""
    from prefect.client.orchestration import get_client

    block_id = _save_block(request)
    automation = _automation(request, block_id)
    with get_client(sync_client=True) as client:
        existing = _find(client, request.root, request.name)
        if existing is None:
            automation_id = client.create_automation(automation)
        else:
            automation_id = existing.id
            client.update_automation(existing.id, automation)
            # webhook <-> Slack: a block of the other type held the old URL; it must not stay behind
            _delete_blocks(client, existing, keep=block_id)
    return Notification(
        name=request.name,
        kind=request.kind,
        target=redact(request.url),
        states=request.states,
        enabled=True,
        id=str(automation_id),
        created=existing is None,
    )


def _ours(automation: Any, root: Path) -> bool:
    """An automation `notify` made for this repository: its trigger names the repository's tag."""
    from dvcflow.api.tags import repo_tag

    related = getattr(automation.trigger, "match_related", None) or []
    for resource in related if isinstance(related, list) else [related]:
        labels: dict[str, Any] = getattr(resource, "root", None) or {}  # a ResourceSpecification
        if labels.get("prefect.resource.id") == f"prefect.tag.{repo_tag(root)}":
            return any(action.type in ("call-webhook", "send-notification") for action in automation.actions)
    return False


def _find(client: Any, root: Path, name: str) -> Any:
    for automation in client.read_automations_by_name(name):
        if _ours(automation, root):
            return automation
    return None


def _describe(automation: Any) -> Notification:
    expect = sorted(event.rsplit(".", 1)[-1] for event in (automation.trigger.expect or ()))
    action = automation.actions[0]
    kind = SLACK if action.type == "send-notification" else WEBHOOK
    description = automation.description or ""
    target = description.split(f"({kind} ", 1)[-1].split(")", 1)[0] if f"({kind} " in description else "?"
    return Notification(
        name=automation.name,
        kind=kind,
        target=target,
        states=tuple(expect),
        enabled=automation.enabled,
        id=str(automation.id),
    )


def list_notifications(repo: Path | None) -> tuple[Notification, ...]:
    from prefect.client.orchestration import get_client

    root = repository.find_repo_root(repo)
    with get_client(sync_client=True) as client:
        automations = client.read_automations()
    return tuple(_describe(item) for item in sorted(automations, key=lambda a: a.name) if _ours(item, root))


def remove_notification(repo: Path | None, name: str) -> Notification:
    """Delete the automation and the block holding its URL."""
    from prefect.client.orchestration import get_client

    root = repository.find_repo_root(repo)
    with get_client(sync_client=True) as client:
        automation = _find(client, root, name)
        if automation is None:
            known = ", ".join(sorted(item.name for item in client.read_automations() if _ours(item, root)))
            raise UsageError(
                f"no notification named {name!r} for this repository",
                hint=f"this repository has: {known}" if known else "`dvcflow notify --list` shows none",
            )
        client.delete_automation(automation.id)
        _delete_blocks(client, automation, keep=None)
    return _describe(automation)


def _delete_blocks(client: Any, automation: Any, *, keep: Any) -> None:
    """Delete the blocks (the stored URLs) of `automation`'s actions, except block `keep`."""
    from prefect.exceptions import ObjectNotFound

    for action in automation.actions:
        block_id = getattr(action, "block_document_id", None)
        if block_id is not None and str(block_id) != str(keep):
            with contextlib.suppress(ObjectNotFound):
                client.delete_block_document(block_id)
