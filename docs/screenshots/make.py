"""Make the README's screenshots: a real agent on a demo home (two weeks of spend in the ledger,
a signed policy with budgets on a local share), then `aifinops-tray --screenshot` against it,
which asks the local model one real question and renders the chat, dashboard and tray menu.

    .venv/bin/python docs/screenshots/make.py          # writes docs/screenshots/*.png
"""

from __future__ import annotations

import getpass
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.identity import Identity  # noqa: E402
from agent.ledger.database import Database  # noqa: E402
from agent.ledger.requests import RequestLog, RequestRecord  # noqa: E402
from agent.ledger.users import UserStore  # noqa: E402
from agent.policy.model import parse_policy  # noqa: E402
from agent.policy.publish import Signed, publish  # noqa: E402
from agent.policy.signing import generate_keypair, sign  # noqa: E402
from bench.overhead import free_port, wait_http  # noqa: E402

POLICY = """version = 1
organisation = "Example Corp"
timezone = "UTC"
default_department = "engineering"

[[budgets]]
name = "my-day"
scope = "user"
match = "*"
period = "day"
amount_usd = "0.50"
action = "downgrade"
alerts = [80]

[[budgets]]
name = "engineering-month"
scope = "department"
match = "engineering"
period = "month"
amount_usd = "0.50"
action = "block"
alerts = [50, 80, 100]
"""

# (model, provider, route, tier, input USD/Mtok, output USD/Mtok)
ROUTES = [
    ("local", "local", "local", "local", 0.0, 0.0),
    ("gpt-4o-mini", "openai", "cloud", "cheap", 0.15, 0.60),
    ("gpt-4o", "openai", "cloud", "strong", 2.50, 10.0),
]
FEATURES = ["support-replies", "code-review", "reports", ""]


def history(user_id: int, user: str, days: int = 14, seed: int = 3) -> list[RequestRecord]:
    """Two weeks of a busy user's requests: mostly cheap, some strong, a share from the cache."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    rows = []
    for day in range(days, 0, -1):
        for n in range(rng.randint(25, 60)):
            ts = (now - timedelta(days=day, minutes=rng.randint(0, 600))).isoformat(timespec="microseconds")
            model, provider, route, tier, price_in, price_out = rng.choices(ROUTES, weights=[5, 4, 1])[0]
            tokens_in, tokens_out = rng.randint(200, 2500), rng.randint(50, 700)
            cost = round(tokens_in * price_in + tokens_out * price_out)  # micro-USD: USD/Mtok x tokens
            hit = model != ROUTES[0][0] and rng.random() < 0.15
            rows.append(
                RequestRecord(
                    id=f"demo-{day}-{n}", ts=ts, user_id=user_id, user_name=user, department="engineering",
                    feature=rng.choice(FEATURES), requested_model="auto", model=model, provider=provider,
                    route="cache" if hit else route, reason="", input_tokens=tokens_in, output_tokens=tokens_out,
                    tokens_estimated=False, cost_micro_usd=0 if hit else cost, price_source="genai-prices",
                    cost_saved_micro_usd=cost if hit else rng.choice([0, 0, 0, cost // 8]), cache_hit=hit,
                    latency_ms=rng.randint(300, 4000), status="ok", error_type="", stream=True, attempts=1,
                    tier=tier,
                )
            )
    return rows


def main() -> None:
    out_dir = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="aifinops-screens-") as tmp:
        home, share = Path(tmp) / "home", Path(tmp) / "share"
        share.mkdir()
        key, public = generate_keypair()
        body = POLICY.encode()
        publish(Signed(parse_policy(body), body, sign(body, key)), share)
        (home / "config").mkdir(parents=True)
        (home / "config" / "config.toml").write_text(
            f'[share]\npath = "{share}"\npublic_keys = ["{public}"]\n'
        )
        db = Database.open(home / "data" / "ledger.db")
        caller = Identity(UserStore(db)).provision_os_user(home / "config" / "token", department="engineering")
        assert caller is not None
        log = RequestLog(db)
        for row in history(caller.user_id, caller.user or getpass.getuser()):
            log.record(row)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "AIFINOPS_AGENT__LOG_LEVEL": "WARNING"}
        cmd = [sys.executable, "-m", "agent", "--home", str(home), "agent", "run", "--port", str(port)]
        agent = subprocess.Popen(cmd, cwd=REPO, env=env)
        try:
            wait_http(f"{url}/api/v1/info")
            token = (home / "config" / "token").read_text().strip()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the first policy sync
                report = httpx.get(f"{url}/api/v1/budgets", headers={"Authorization": f"Bearer {token}"}).json()
                if report["policy_version"] == 1:
                    break
                time.sleep(0.5)
            tray = [sys.executable, "-m", "gui.app", "--home", str(home), "--url", url, "--screenshot", str(out_dir)]
            subprocess.run(tray, cwd=REPO, env={**env, "QT_QPA_PLATFORM": "offscreen"}, check=True)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)


if __name__ == "__main__":
    main()
