"""`/{cenv}/auth/...`: login, logout, register, me, password.

Hashing runs in a thread (argon2 releases the GIL); every database step runs on the worker's own
thread, so the connection is never used by two threads at once.

The session cookie (wce.responses.session_cookie): `Path=/{cenv}/` in path mode; host-only with
`Path=/` on a cenv's own host (`__Host-` over https). A login from another origin (a page in a
sandbox, a front end elsewhere) gets its token in the body and no cookie: a page elsewhere can
never sign a browser in as someone (login CSRF), and it has no use for a cookie it cannot send.
"""

from __future__ import annotations

from wce.core import accounts, auth
from wce.core.errors import BadRequest, Conflict, Forbidden, Invalid, InvalidCredentials, RateLimited

from wce.responses import session_cookie

from .http import Call, Reply, json_reply, no_content
from .offload import in_thread
from .routes import Route, ref


def _cookie(call: Call, value: str, max_age: int) -> tuple[str, str]:
    https = call.req.scheme == "https"
    name = session_cookie(bool(call.tenant.config.cenv_domain), https)
    secure = "; Secure" if https else ""
    return ("set-cookie", f"{name}={value}; Path={call.root}/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")


def _str_field(body: dict[str, object], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{name}' must be a non-empty string")
    return value


async def login(call: Call) -> Reply:
    """Check a password and open a session: a token in the body and as a cookie."""
    body = call.json_object()
    username, password = _str_field(body, "username"), _str_field(body, "password")
    t = call.tenant
    user_key = username.lower()
    retry = t.failed_by_ip.retry_after(call.client) or t.failed_by_user.retry_after(user_key)
    if retry:
        raise RateLimited("too many failed logins; try again later", retry_after=retry)
    candidate = accounts.find_for_login(t.conn, username)
    ok = await in_thread(
        auth.verify_password, candidate.password_hash if candidate else None, password[: auth.MAX_PASSWORD]
    )
    if not ok or candidate is None:
        t.failed_by_ip.hit(call.client)
        t.failed_by_user.hit(user_key)
        accounts.record_login_failure(t.conn, username, ip=call.client,
                                      reason="wrong password" if candidate else "unknown user")
        raise InvalidCredentials("invalid username or password")
    t.failed_by_user.reset(user_key)
    new_hash = None
    if auth.needs_rehash(candidate.password_hash):
        new_hash = await in_thread(auth.hash_password, password)
    ttl = int(t.settings["session_ttl_seconds"])
    sid, _ = accounts.open_session(t.conn, candidate.user, ttl, ip=call.client,
                                   user_agent=call.header("user-agent"), new_hash=new_hash)
    token, exp = auth.make_token(t.secret, t.cenv_id, candidate.user.id, candidate.user.role, sid, ttl)
    return json_reply(
        {"token": token, "expires_at": exp, "user": candidate.user.public()},
        headers=[_cookie(call, token, ttl)] if call.same_origin else [],
    )


async def logout(call: Call) -> Reply:
    """Revoke the current session; the token stops working at once."""
    user = call.require_user()
    assert call.req.identity is not None
    accounts.revoke_session(call.tenant.conn, user, str(call.req.identity["jti"]), ip=call.client)
    return no_content(_cookie(call, "", 0))


async def register(call: Call) -> Reply:
    """Self-service sign-up, when the cenv's registration is open."""
    t = call.tenant
    if t.settings["registration"] != "open":
        raise Forbidden("registration is closed")
    body = call.json_object()
    username = auth.check_username(body.get("username"))
    password = auth.check_password(body.get("password"))
    password_hash = await in_thread(auth.hash_password, password)
    user = accounts.create_user(t.conn, username, password_hash, t.settings["default_role"],
                                actor=None, ip=call.client, action="auth.register")
    return json_reply({"user": user.public()}, status=201)


async def me(call: Call) -> Reply:
    """The signed-in user."""
    return json_reply(call.require_user().public())


async def password(call: Call) -> Reply:
    """Change one's own password; every other session of the user is revoked."""
    user = call.require_user()
    body = call.json_object()
    old = _str_field(body, "old_password")
    new = auth.check_password(body.get("new_password"))
    t = call.tenant
    current = accounts.get_password_hash(t.conn, user.id)
    if not await in_thread(auth.verify_password, current, old[: auth.MAX_PASSWORD]):
        raise InvalidCredentials("old password is wrong")
    new_hash = await in_thread(auth.hash_password, new)
    assert call.req.identity is not None
    accounts.change_password(t.conn, user, new_hash, str(call.req.identity["jti"]), ip=call.client)
    return no_content()


CREDENTIALS = {"type": "object", "required": ["username", "password"], "properties": {
    "username": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
    "password": {"type": "string", "minLength": 8, "maxLength": 1024}}}
SESSION = {"type": "object", "required": ["token", "expires_at", "user"],
           "properties": {"token": {"type": "string"}, "expires_at": {"type": "integer"}, "user": ref("User")}}
NEW_PASSWORD = {"type": "object", "required": ["old_password", "new_password"], "properties": {
    "old_password": {"type": "string"}, "new_password": {"type": "string", "minLength": 8}}}

ROUTES = (
    Route("POST", "/auth/login", login, "public", "sign in", body=CREDENTIALS, answer=SESSION,
          errors=(InvalidCredentials, RateLimited)),
    Route("POST", "/auth/logout", logout, "user", "sign out (revokes the session)", ok=(204,)),
    Route("POST", "/auth/register", register, "public", "sign up when registration is open", body=CREDENTIALS,
          ok=(201,), answer={"type": "object", "properties": {"user": ref("User")}}, errors=(Forbidden, Conflict, Invalid)),
    Route("GET", "/auth/me", me, "user", "the signed-in user", answer=ref("User")),
    Route("POST", "/auth/password", password, "user", "change one's password", body=NEW_PASSWORD, ok=(204,),
          errors=(InvalidCredentials, Invalid)),
)
