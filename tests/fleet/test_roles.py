"""Users, roles, scopes and API keys: what an admin sets up is what a user or a machine gets."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import jwt
import sqlalchemy as sa

from fleet.auth import JWT_ALGORITHM
from fleet.db import migrate, utcnow
from fleet.models import ApiKey, AuditEntry, User
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import SECRET, fleet_client, make_settings
from tests.fleet.sites_helpers import engine_sessions, seeded

REPO = Path(__file__).resolve().parents[2]


async def test_admin_creates_a_scoped_user_who_sees_only_their_compounds(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        admin = seed.auth("admin")
        r = await client.post(
            "/api/users",
            headers=admin,
            json={
                "username": "wuye_li",
                "password": "secret-pass-1",
                "role": "property",
                "display_name": "李物业",
                "compound_ids": [seed.b.compound],
            },
        )
        assert r.status_code == 201, r.text
        user = r.json()
        assert user["compound_ids"] == [seed.b.compound] and "password" not in r.text
        r = await client.post("/api/users", headers=admin, json={**user, "password": "x" * 9})
        assert r.status_code == 422  # unknown fields (id, created_at...) are refused
        r = await client.post(
            "/api/users",
            headers=admin,
            json={"username": "wuye_li", "password": "another-pass", "role": "officer"},
        )
        assert r.status_code == 409
        r = await client.post(
            "/api/users",
            headers=admin,
            json={
                "username": "x",
                "password": "long-enough",
                "role": "officer",
                "compound_ids": [999999],
            },
        )
        assert r.status_code == 422 and "no such compound" in r.text

        token = await client.post(
            "/api/auth/token", data={"username": "wuye_li", "password": "secret-pass-1"}
        )
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        r = await client.get("/api/flats", headers=headers)
        assert [f["id"] for f in r.json()["items"]] == [seed.b.flat]
        assert (await client.get(f"/api/flats/{seed.a.flat}", headers=headers)).status_code == 403

        # Moving the user to compound A takes effect on the next request, same token.
        r = await client.patch(
            f"/api/users/{user['id']}", headers=admin, json={"compound_ids": [seed.a.compound]}
        )
        assert r.status_code == 200
        assert (await client.get(f"/api/flats/{seed.a.flat}", headers=headers)).status_code == 200
        assert (await client.get(f"/api/flats/{seed.b.flat}", headers=headers)).status_code == 403

        # Deactivated: the token stops working at once and the password no longer logs in.
        r = await client.patch(f"/api/users/{user['id']}", headers=admin, json={"active": False})
        assert r.json()["active"] is False
        assert (await client.get("/api/flats", headers=headers)).status_code == 401
        r = await client.post(
            "/api/auth/token", data={"username": "wuye_li", "password": "secret-pass-1"}
        )
        assert r.status_code == 401

        # Admins cannot lock themselves out.
        me = (await client.get("/api/auth/me", headers=admin)).json()
        r = await client.patch(f"/api/users/{me['id']}", headers=admin, json={"role": "officer"})
        assert r.status_code == 409
        assert (await client.delete(f"/api/users/{me['id']}", headers=admin)).status_code == 409
        assert (await client.delete(f"/api/users/{user['id']}", headers=admin)).status_code == 204
        assert (await client.get(f"/api/users/{user['id']}", headers=admin)).status_code == 404

        # An officer is scoped by street office: a compound added to it later is theirs too.
        officer = seed.auth("officer", "a")
        r = await client.post(
            "/api/compounds",
            headers=admin,
            json={"street_office_id": seed.a.street_office, "name": "新小区"},
        )
        new_compound = r.json()["id"]
        me = (await client.get("/api/auth/me", headers=officer)).json()
        assert me["compound_ids"] == sorted([seed.a.compound, new_compound])


async def test_tokens_expire_and_must_be_signed(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url, token_ttl_minutes=5)
    async with fleet_client(settings) as client:
        r = await client.post(
            "/api/auth/token",
            data={"username": "admin", "password": settings.effective_admin_password},
        )
        expires = r.json()["expires_at"]
        claims = jwt.decode(r.json()["access_token"], SECRET, algorithms=[JWT_ALGORITHM])
        assert claims["exp"] - claims["iat"] == 300 and expires
        now = utcnow()
        expired = jwt.encode(
            {"sub": "admin", "iat": now - timedelta(minutes=10), "exp": now - timedelta(seconds=1)},
            SECRET,
            algorithm=JWT_ALGORITHM,
        )
        no_expiry = jwt.encode({"sub": "admin", "iat": now}, SECRET, algorithm=JWT_ALGORITHM)
        for token in (expired, no_expiry):
            r = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401


async def test_api_keys_act_as_their_owner_and_can_be_revoked(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    settings = make_settings(mqtt_broker, database_url)
    async with fleet_client(settings) as client, seeded(client, mqtt_broker, settings) as seed:
        admin = seed.auth("admin")
        r = await client.post(
            "/api/users",
            headers=admin,
            json={
                "username": "office-system",
                "password": "machine-account-pw",
                "role": "officer",
                "street_office_id": seed.a.street_office,
            },
        )
        owner = r.json()["id"]
        r = await client.post(
            f"/api/users/{owner}/api-keys", headers=admin, json={"name": "平安办 case system"}
        )
        assert r.status_code == 201
        created = r.json()
        key = created["key"]
        assert key.startswith(f"fmk_{created['prefix']}_")
        listed = (await client.get(f"/api/users/{owner}/api-keys", headers=admin)).json()
        assert key not in str(listed) and listed["items"][0]["prefix"] == created["prefix"]

        machine = {"X-API-Key": key}
        me = (await client.get("/api/auth/me", headers=machine)).json()
        assert me["username"] == "office-system" and me["via"] == f"api_key:{created['id']}"
        r = await client.get("/api/alerts", headers=machine)
        assert [a["alert_id"] for a in r.json()["items"]] == [seed.a.alert]
        assert (await client.get(f"/api/alerts/{seed.b.alert}", headers=machine)).status_code == 403
        assert (await client.get("/api/users", headers=machine)).status_code == 403
        wrong = {"X-API-Key": key[:-2] + ("AA" if not key.endswith("AA") else "BB")}
        assert (await client.get("/api/auth/me", headers=wrong)).status_code == 401
        assert (await client.get("/api/auth/me", headers={"X-API-Key": "junk"})).status_code == 401

        # Hashed at rest: the database holds no copy of the secret.
        with engine_sessions(database_url) as sessions, sessions() as session:
            row = session.scalars(sa.select(ApiKey).where(ApiKey.id == created["id"])).one()
            assert key.split("_", 2)[2] not in row.secret_hash and row.last_used_at is not None
            audit = " ".join(str(e.summary) for e in session.scalars(sa.select(AuditEntry)))
            assert key.split("_", 2)[2] not in audit

        r = await client.delete(f"/api/users/{owner}/api-keys/{created['id']}", headers=admin)
        assert r.status_code == 204
        assert (await client.get("/api/auth/me", headers=machine)).status_code == 401

        r = await client.post(
            f"/api/users/{owner}/api-keys",
            headers=admin,
            json={"name": "short-lived", "expires_at": (utcnow() + timedelta(hours=1)).isoformat()},
        )
        short = {"X-API-Key": r.json()["key"]}
        assert (await client.get("/api/auth/me", headers=short)).status_code == 200
        with engine_sessions(database_url) as sessions, sessions() as session:
            session.execute(
                sa.update(ApiKey)
                .where(ApiKey.id == r.json()["id"])
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
            session.commit()
        assert (await client.get("/api/auth/me", headers=short)).status_code == 401
        r = await client.post(
            f"/api/users/{owner}/api-keys",
            headers=admin,
            json={"name": "past", "expires_at": "2020-01-01T00:00:00Z"},
        )
        assert r.status_code == 422


def test_cli_user_add(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    env = {"PATH": "/usr/bin:/bin", "FLEET_DATABASE_URL": url}

    def run(*args: str, password: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fleet", *args],
            cwd=REPO,
            env=env,
            input=password,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    result = run("db", "upgrade")
    assert result.returncode == 0, result.stderr
    migrate(url)  # a second upgrade is a no-op
    result = run(
        "user", "add", "li", "--role", "officer", "--password-stdin", password="pw-long-enough\n"
    )
    assert result.returncode == 0, result.stderr
    assert "created user 'li'" in result.stdout and "role officer" in result.stdout
    result = run(
        "user", "add", "li", "--role", "officer", "--password-stdin", password="pw-long-enough\n"
    )
    assert result.returncode == 2 and "exists" in result.stderr
    result = run(
        "user",
        "add",
        "wang",
        "--role",
        "installer",
        "--compound",
        "nowhere",
        "--password-stdin",
        password="pw-long-enough\n",
    )
    assert result.returncode == 2 and "no such compound" in result.stderr
    result = run(
        "user", "add", "zhao", "--role", "property", "--password-stdin", password="short\n"
    )
    assert result.returncode == 2 and "at least 8" in result.stderr
    result = run("user", "add", "zhao", "--role", "property")  # no terminal, no --password-stdin
    assert result.returncode == 2 and "--password-stdin" in result.stderr
    result = run("user", "add", "zhao", "--role", "janitor", "--password-stdin", password="x" * 9)
    assert result.returncode == 2
    with engine_sessions(url) as sessions, sessions() as session:
        users = {u.username: u for u in session.scalars(sa.select(User))}
        assert set(users) == {"li"} and users["li"].role == "officer"
        assert "pw-long-enough" not in users["li"].password_hash
        [entry] = session.scalars(sa.select(AuditEntry)).all()
        assert (entry.actor, entry.action, entry.entity) == ("cli", "create", "user")
        assert "password" not in str(entry.summary)
