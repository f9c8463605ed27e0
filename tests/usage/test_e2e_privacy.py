"""Nothing secret reaches the usage database: the bytes of the file and its write-ahead log
are searched for a planted client key, backend key and prompt phrase."""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx
import openai

from tests.conftest import backend_for
from tests.support.waiting import wait_until
from tests.usage.test_e2e_records import FAST_FLUSH

CLIENT_KEY = "sk-client-PLANTED-7c1e55d2"
BACKEND_KEY = "sk-backend-PLANTED-91b0fa3e"
PHRASE = "zebra-quartz-lighthouse-phrase"


def _db_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_db_holds_no_keys_and_no_prompt_text(gateway_factory, mock_llm) -> None:
    gw = gateway_factory(
        {
            "backends": {
                "openai.1": {**backend_for(mock_llm, "openai"), "api_key": BACKEND_KEY},
                "anthropic.1": {**backend_for(mock_llm, "anthropic"), "api_key": BACKEND_KEY},
            },
            "default_backend": "openai.1",
            "auth": {"api_keys": [CLIENT_KEY]},
            "usage_tracking": dict(FAST_FLUSH),
        }
    )
    msgs = [
        {"role": "system", "content": f"system {PHRASE}"},
        {"role": "user", "content": f"user {PHRASE}"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": f'{{"q": "{PHRASE}"}}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": f"result {PHRASE}"},
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": f"tool {PHRASE}",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0) as c:
        c.chat.completions.create(model="gpt-4o", messages=msgs, tools=tools)
        list(c.chat.completions.create(model="gpt-4o", messages=msgs, stream=True))
        c.embeddings.create(model="text-embedding-3-small", input=[PHRASE])
    with anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0) as a:
        a.messages.create(
            model="claude-haiku-4-5",
            max_tokens=32,
            system=f"sys {PHRASE}",
            messages=[{"role": "user", "content": f"hello {PHRASE}"}],
        )
    # A rejected request carries a key too (a wrong one, in a header the record skips).
    with openai.OpenAI(
        base_url=gw.url + "/v1", api_key=CLIENT_KEY + "-wrong", max_retries=0
    ) as bad:
        try:
            bad.chat.completions.create(model="gpt-4o", messages=msgs)
        except openai.AuthenticationError:
            pass
    # With client keys set, monitoring on the data port needs one; the admin listener
    # keeps its loopback rule and needs none.
    admin = f"http://127.0.0.1:{gw.gateway.admin_port}/v1/usage/recent"
    assert httpx.get(gw.url + "/v1/usage/recent", timeout=10).status_code == 401
    wait_until(lambda: httpx.get(admin, timeout=10).json()["total"] == 5, what="five records")
    db = Path(gw.gateway.config.state_dir) / "usage.db"
    planted = [CLIENT_KEY.encode(), BACKEND_KEY.encode(), PHRASE.encode(), b"127.0.0.1"]
    live = _db_bytes(db)
    assert live, "the database file exists"
    gw.stop()
    for blob in (live, _db_bytes(db)):
        for secret in planted:
            assert secret not in blob, secret
