"""``distillops server``: a team's MLflow tracking server, on PostgreSQL, with basic authentication.

distillops server start [--host H] [--port P] [--artifacts-destination DIR|s3://...] [--allowed-hosts ...]
    runs ``mlflow server --app-name basic-auth`` with the PostgreSQL database in ``DISTILLOPS_SERVER_DB``
    as its tracking, registry and user store, and proxies artifacts (``--serve-artifacts``), so a client
    needs only the server's URL and its own credentials.
distillops server add-user NAME [--admin]       a user; the password is read from ``DISTILLOPS_USER_PASSWORD``
                                                 (or asked for on a terminal)
distillops server grant NAME --experiment E | --model M --permission READ|EDIT|MANAGE|NO_PERMISSIONS

Secrets come from the environment only, never from the repository or the command line (a command line is
visible to every user of the machine in ``ps``): ``DISTILLOPS_SERVER_DB`` (``postgresql://user:pw@host:port/db``),
``MLFLOW_AUTH_ADMIN_PASSWORD`` (the admin's password, 12+ characters, used the first time the server
starts on an empty database) and ``MLFLOW_FLASK_SERVER_SECRET_KEY`` (signs the UI's sessions). The admin
commands talk to ``MLFLOW_TRACKING_URI`` as ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``,
the same variables the pipeline uses. Every user may read every experiment (``default_permission = READ``);
what a user creates, that user manages; anything more is granted.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.errors import DistillopsError
from pipeline.tracking import redact

DB_ENV = "DISTILLOPS_SERVER_DB"
USER_PASSWORD_ENV = "DISTILLOPS_USER_PASSWORD"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")
MIN_PASSWORD = 12  # MLflow's own minimum for the admin password


def auth_config(db_uri: str, default_permission: str = "READ", cache_seconds: int = 60) -> str:
    """The basic-auth app's config: users and permissions in the same database as the runs (its tables
    and migration history are its own). With ``cache_seconds``, a checked password is remembered that
    long by the worker that checked it: MLflow hashes it on every request otherwise (a stage makes
    hundreds), and a changed or revoked password takes up to that long to apply on every worker."""
    return (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {db_uri}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {cache_seconds}\n"
    )


def _database_uri() -> str:
    uri = os.environ.get(DB_ENV, "").strip()
    if not uri:
        raise DistillopsError(
            f"{DB_ENV} is not set: export the server's database as "
            f"{DB_ENV}=postgresql://USER:PASSWORD@HOST:PORT/DATABASE (kept out of the command line and the repo)"
        )
    scheme = uri.split("://", 1)[0]
    if scheme.startswith("postgresql"):
        try:
            import psycopg  # noqa: F401  (SQLAlchemy 2.1's postgresql:// driver)
        except ImportError:
            raise DistillopsError(
                f"{DB_ENV} is a PostgreSQL URI but the psycopg 3 driver is missing: pip install 'psycopg[binary]'"
            ) from None
    elif scheme != "sqlite":
        raise DistillopsError(f"{DB_ENV}={redact(uri)}: expected a postgresql:// (or sqlite:///) URI")
    return uri


def _check_secrets() -> None:
    password = os.environ.get(ADMIN_PASSWORD_ENV, "")
    if len(password) < MIN_PASSWORD:
        raise DistillopsError(
            f"{ADMIN_PASSWORD_ENV} is {'too short' if password else 'not set'}: the server's admin password, "
            f"{MIN_PASSWORD}+ characters, from the environment (used when the server first starts)"
        )
    if not os.environ.get(SECRET_KEY_ENV):
        raise DistillopsError(
            f"{SECRET_KEY_ENV} is not set: a random secret that signs the UI's sessions, e.g. "
            f'export {SECRET_KEY_ENV}="$(python -c "import secrets; print(secrets.token_hex(32))")"'
        )


def _check_database(uri: str) -> None:
    """Connect once, in seconds, so a wrong host or password is reported before the server starts."""
    import sqlalchemy

    connect_args = {"connect_timeout": 5} if uri.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        engine.dispose()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistillopsError(
            f"cannot connect to the server's database {redact(uri)} ({DB_ENV}): {first[:300]}"
        ) from None


def server_command(args: argparse.Namespace) -> list[str]:
    """The ``mlflow server`` command line: no secret in it (the stores come through the environment)."""
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--app-name", "basic-auth",
        "--host", args.host,
        "--port", str(args.port),
        "--serve-artifacts",
        "--artifacts-destination", args.artifacts_destination,
        "--workers", str(args.workers),
    ]  # fmt: skip
    if args.allowed_hosts:
        cmd += ["--allowed-hosts", args.allowed_hosts]
    return cmd


def cmd_start(args: argparse.Namespace) -> int:
    db = _database_uri()
    _check_secrets()
    _check_database(db)
    with tempfile.TemporaryDirectory(prefix="distillops-server-") as private:
        ini = Path(private) / "basic_auth.ini"
        ini.touch(mode=0o600)  # it holds the database's password: readable by this user alone
        ini.write_text(auth_config(db, args.default_permission, args.auth_cache_seconds))
        env = {
            **os.environ,
            "MLFLOW_BACKEND_STORE_URI": db,
            "MLFLOW_REGISTRY_STORE_URI": db,
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            # MLflow's job runner (a dozen worker processes for its GenAI scorers) serves nothing the
            # pipeline logs: off unless asked for
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(args.jobs).lower(),
        }
        cmd = server_command(args)
        print(
            f"distillops server: MLflow on http://{args.host}:{args.port}, runs and users in {redact(db)}, "
            f"artifacts in {args.artifacts_destination}, basic auth (default permission "
            f"{args.default_permission})",
            flush=True,
        )
        proc = subprocess.Popen(cmd, env=env)

        def forward(signum: int, _frame: object) -> None:
            proc.send_signal(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, forward)
        return proc.wait()


def _admin_client():
    from mlflow.server import get_app_client

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise DistillopsError(
            "MLFLOW_TRACKING_URI must be the server's URL (http://HOST:PORT), with an admin's "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    return get_app_client("basic-auth", tracking_uri=uri)


def _new_password() -> str:
    password = os.environ.get(USER_PASSWORD_ENV)
    if password is None and sys.stdin.isatty():
        import getpass

        password = getpass.getpass("the new user's password: ")
    if not password:
        raise DistillopsError(f"no password: set {USER_PASSWORD_ENV} (or run on a terminal to be asked)")
    return password


def cmd_add_user(args: argparse.Namespace) -> int:
    client = _admin_client()
    _mlflow_call(lambda: client.create_user(args.name, _new_password()), f"creating user {args.name}")
    if args.admin:
        _mlflow_call(lambda: client.update_user_admin(args.name, True), f"making {args.name} an admin")
    print(f"user {args.name} created{' (admin)' if args.admin else ''}")
    return 0


def cmd_grant(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    client = _admin_client()
    if args.experiment:
        exp = _mlflow_call(
            lambda: MlflowClient().get_experiment_by_name(args.experiment), f"finding {args.experiment}"
        )
        if exp is None:
            raise DistillopsError(
                f"no experiment named {args.experiment!r} on {os.environ['MLFLOW_TRACKING_URI']}"
            )
        resource, ident = "experiment", exp.experiment_id
    else:
        resource, ident = "registered_model", args.model
    _mlflow_call(
        lambda: client.grant_user_permission(args.name, resource, ident, args.permission),
        f"granting {args.permission} on {resource} {ident} to {args.name}",
    )
    print(f"{args.name}: {args.permission} on {resource} {args.experiment or args.model}")
    return 0


def _mlflow_call(fn, what: str):
    from mlflow.exceptions import MlflowException

    try:
        return fn()
    except MlflowException as exc:
        raise DistillopsError(f"{what}: {exc.message.splitlines()[0][:300]}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    server = sub.add_parser("server", help="a team's MLflow server: PostgreSQL, basic auth, users")
    ssub = server.add_subparsers(dest="server_command", required=True)
    start = ssub.add_parser("start", help=f"run mlflow server on the database in ${DB_ENV}, with basic auth")
    start.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    start.add_argument("--port", type=int, default=5000)
    start.add_argument(
        "--artifacts-destination",
        default="./mlartifacts",
        help="where the server keeps artifacts: a folder, s3://..., ... (default: ./mlartifacts)",
    )
    start.add_argument(
        "--allowed-hosts",
        help="Host headers the server answers, comma-separated (e.g. mlflow.team.lan,mlflow.team.lan:5000); "
        "MLflow's default answers localhost only",
    )
    start.add_argument("--workers", type=int, default=2)
    start.add_argument("--default-permission", default="READ", choices=PERMISSIONS)
    start.add_argument(
        "--auth-cache-seconds",
        type=int,
        default=60,
        help="how long a worker remembers a checked password (default 60; 0: hash it on every request)",
    )
    start.add_argument("--jobs", action="store_true", help="run MLflow's job workers (GenAI scorers)")
    start.set_defaults(func=cmd_start)
    add = ssub.add_parser("add-user", help=f"create a user (password from ${USER_PASSWORD_ENV})")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true")
    add.set_defaults(func=cmd_add_user)
    grant = ssub.add_parser("grant", help="give a user a permission on an experiment or registered model")
    grant.add_argument("name")
    what = grant.add_mutually_exclusive_group(required=True)
    what.add_argument("--experiment", help="experiment name")
    what.add_argument("--model", help="registered model name")
    grant.add_argument("--permission", required=True, choices=PERMISSIONS)
    grant.set_defaults(func=cmd_grant)
