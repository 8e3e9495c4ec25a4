"""The operator's settings: one frozen object built once at start from the environment and `.env`.

Nothing else in Shepherd reads `os.environ`. `load_settings` gathers every bad or missing
variable and raises one `SettingsError` naming them all, so a misconfigured server fails fast
with a message an operator can act on.

A plain pydantic model with the variable names as validation aliases is used instead of
pydantic-settings' `BaseSettings`: the key may come from a file, empty values count as unset,
the `.env` file must never be written into `os.environ`, and every error has to name the
variable, none of which `BaseSettings` does on its own.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bot.core.budget import DEFAULT_PRICES, ModelPrice, parse_prices
from bot.core.policy import OperatorLimits

APP_ID_VAR = "GITHUB_APP_ID"
PRIVATE_KEY_VAR = "GITHUB_PRIVATE_KEY"
PRIVATE_KEY_PATH_VAR = "GITHUB_PRIVATE_KEY_PATH"
WEBHOOK_SECRET_VAR = "GITHUB_WEBHOOK_SECRET"
API_URL_VAR = "GITHUB_API_URL"
GITHUB_URL_VAR = "GITHUB_URL"
PUBLIC_URL_VAR = "SHEPHERD_PUBLIC_URL"
PORT_VAR = "PORT"
DATA_DIR_VAR = "SHEPHERD_DATA_DIR"
AGENT_VAR = "SHEPHERD_AGENT"
AGENT_COMMAND_VAR = "SHEPHERD_AGENT_COMMAND"
AGENT_ENV_VAR = "SHEPHERD_AGENT_ENV"
AGENT_USER_VAR = "SHEPHERD_AGENT_USER"
MAX_WORKERS_VAR = "SHEPHERD_MAX_WORKERS"
MAX_PER_REPO_VAR = "SHEPHERD_MAX_PER_REPO"
DASHBOARD_TOKEN_VAR = "SHEPHERD_DASHBOARD_TOKEN"
WRITE_SPACING_VAR = "SHEPHERD_WRITE_SPACING_SECONDS"
WORKTREE_POOL_VAR = "SHEPHERD_WORKTREE_POOL"
SANDBOX_VAR = "SHEPHERD_SANDBOX"
SANDBOX_PATHS_VAR = "SHEPHERD_SANDBOX_PATHS"
EGRESS_VAR = "SHEPHERD_EGRESS"
LOG_FORMAT_VAR = "SHEPHERD_LOG_FORMAT"
MODEL_PRICES_VAR = "SHEPHERD_MODEL_PRICES"
# SPEC §7: the Temporal engine (bot/temporal/).
ENGINE_VAR = "SHEPHERD_ENGINE"
HOST_ID_VAR = "SHEPHERD_HOST_ID"
HOST_TIMEOUT_VAR = "SHEPHERD_HOST_TIMEOUT_SECONDS"
HISTORY_EVENTS_VAR = "SHEPHERD_TEMPORAL_HISTORY_EVENTS"
TEMPORAL_ADDRESS_VAR = "TEMPORAL_ADDRESS"
TEMPORAL_NAMESPACE_VAR = "TEMPORAL_NAMESPACE"
TEMPORAL_TLS_CA_VAR = "TEMPORAL_TLS_CA_PATH"
TEMPORAL_TLS_CERT_VAR = "TEMPORAL_TLS_CERT_PATH"
TEMPORAL_TLS_KEY_VAR = "TEMPORAL_TLS_KEY_PATH"

# The variables load_settings reads; anything else in the environment is ignored.
VARIABLES = (
    APP_ID_VAR,
    PRIVATE_KEY_VAR,
    PRIVATE_KEY_PATH_VAR,
    WEBHOOK_SECRET_VAR,
    API_URL_VAR,
    GITHUB_URL_VAR,
    PUBLIC_URL_VAR,
    PORT_VAR,
    DATA_DIR_VAR,
    AGENT_VAR,
    AGENT_COMMAND_VAR,
    AGENT_ENV_VAR,
    AGENT_USER_VAR,
    MAX_WORKERS_VAR,
    MAX_PER_REPO_VAR,
    DASHBOARD_TOKEN_VAR,
    WRITE_SPACING_VAR,
    WORKTREE_POOL_VAR,
    SANDBOX_VAR,
    SANDBOX_PATHS_VAR,
    EGRESS_VAR,
    LOG_FORMAT_VAR,
    MODEL_PRICES_VAR,
    ENGINE_VAR,
    HOST_ID_VAR,
    HOST_TIMEOUT_VAR,
    HISTORY_EVENTS_VAR,
    TEMPORAL_ADDRESS_VAR,
    TEMPORAL_NAMESPACE_VAR,
    TEMPORAL_TLS_CA_VAR,
    TEMPORAL_TLS_CERT_VAR,
    TEMPORAL_TLS_KEY_VAR,
)
# Their values must never appear in an error message or a log line.
SECRET_VARIABLES = frozenset({PRIVATE_KEY_VAR, WEBHOOK_SECRET_VAR, DASHBOARD_TOKEN_VAR})

# Names SHEPHERD_AGENT_ENV may never pass to an agent: Shepherd's own credentials, and anything
# that looks like a GitHub token, because an agent holding one could push or merge past Shepherd.
REFUSED_AGENT_ENV_NAMES = frozenset(
    {
        APP_ID_VAR,
        PRIVATE_KEY_VAR,
        PRIVATE_KEY_PATH_VAR,
        WEBHOOK_SECRET_VAR,
        DASHBOARD_TOKEN_VAR,
        "GH_TOKEN",
        "GITHUB_TOKEN",
        "GH_ENTERPRISE_TOKEN",
        "GITHUB_ENTERPRISE_TOKEN",
        "GITHUB_PAT",
        "GH_PAT",
    }
)
# SHEPHERD_* names are Shepherd's own configuration or the per-turn variables it sets itself.
_REFUSED_AGENT_ENV_PATTERN = re.compile(
    r"^(SHEPHERD_.*|(GH|GITHUB)_.*(TOKEN|SECRET|PRIVATE_KEY|PAT|PASSWORD).*)$", re.IGNORECASE
)
_ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PEM_PATTERN = re.compile(
    r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----\s+[A-Za-z0-9+/=\s]+-----END \1PRIVATE KEY-----"
)

Mode = Literal["github", "setup"]

HEADER_TEXT = "Shepherd cannot start: {count} problem(s) in its settings (environment or .env):"
MISSING_CREDENTIALS_TEXT = (
    "GitHub mode needs {APP_ID_VAR}, {PRIVATE_KEY_VAR} (or {PRIVATE_KEY_PATH_VAR}) and "
    "{WEBHOOK_SECRET_VAR}, but {missing} {verb} not set. Set {them}, or unset all three to start "
    "in setup mode."
)
BOTH_KEY_SOURCES_TEXT = (
    f"{PRIVATE_KEY_VAR} and {PRIVATE_KEY_PATH_VAR} are both set; set only one of them."
)
KEY_FILE_UNREADABLE_TEXT = "cannot read the key file {path}: {reason}"
NOT_PEM_TEXT = (
    "is not a PEM private key (expected '-----BEGIN ... PRIVATE KEY-----'); use the .pem file "
    "GitHub gave you when you generated the App's private key"
)
COMMAND_MISSING_TEXT = (
    f"{AGENT_VAR}=command needs {AGENT_COMMAND_VAR}, the command line to run for each turn."
)
REFUSED_AGENT_ENV_TEXT = (
    "refuses {names}: Shepherd never passes its own secrets, its own settings or GitHub tokens "
    "to an agent"
)
BAD_ENV_NAME_TEXT = "{names} {verb} not a valid environment variable name"
UNKNOWN_USER_TEXT = "there is no OS user named {user!r} on this machine"
BAD_URL_TEXT = "must be an http:// or https:// URL"


class SettingsError(Exception):
    """The settings are unusable; `problems` holds one line per bad or missing variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        header = HEADER_TEXT.format(count=len(problems))
        super().__init__("\n".join([header, *(f"  - {problem}" for problem in problems)]))


def _missing_credentials(has_app_id: bool, has_key: bool, has_secret: bool) -> str | None:
    """Say which App credentials are missing when some, but not all, are present."""
    present = (has_app_id, has_key, has_secret)
    if all(present) or not any(present):
        return None
    names = (APP_ID_VAR, f"{PRIVATE_KEY_VAR} (or {PRIVATE_KEY_PATH_VAR})", WEBHOOK_SECRET_VAR)
    missing = [name for name, there in zip(names, present) if not there]
    return MISSING_CREDENTIALS_TEXT.format(
        APP_ID_VAR=APP_ID_VAR,
        PRIVATE_KEY_VAR=PRIVATE_KEY_VAR,
        PRIVATE_KEY_PATH_VAR=PRIVATE_KEY_PATH_VAR,
        WEBHOOK_SECRET_VAR=WEBHOOK_SECRET_VAR,
        missing=" and ".join(missing),
        verb="is" if len(missing) == 1 else "are",
        them="it" if len(missing) == 1 else "them",
    )


def _refused_agent_env_names(names: tuple[str, ...]) -> list[str]:
    return [
        name
        for name in names
        if name.upper() in REFUSED_AGENT_ENV_NAMES or _REFUSED_AGENT_ENV_PATTERN.match(name)
    ]


class Settings(BaseModel):
    """The operator's settings (SPEC §3). Built by `load_settings`; secrets never show in its repr."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )

    app_id: int | None = Field(
        None, gt=0, validation_alias=APP_ID_VAR, description="The GitHub App's id."
    )
    private_key: SecretStr | None = Field(
        None,
        validation_alias=PRIVATE_KEY_VAR,
        description=(
            f"The App's PEM private key, from {PRIVATE_KEY_VAR} (text; literal \\n is accepted "
            f"for line breaks) or read from the file named by {PRIVATE_KEY_PATH_VAR}."
        ),
    )
    webhook_secret: SecretStr | None = Field(
        None, validation_alias=WEBHOOK_SECRET_VAR, description="The App's webhook secret."
    )
    api_url: str = Field(
        "https://api.github.com",
        validation_alias=API_URL_VAR,
        description="REST base URL without a trailing slash (GHES: https://HOST/api/v3).",
    )
    github_url: str = Field(
        "https://github.com",
        validation_alias=GITHUB_URL_VAR,
        description="Web base URL, for the manifest flow and links, without a trailing slash.",
    )
    public_url: str = Field(
        "",
        validation_alias=PUBLIC_URL_VAR,
        description="The URL at which GitHub reaches this server; defaults to http://127.0.0.1:$PORT.",
    )
    port: int = Field(3000, ge=1, le=65535, validation_alias=PORT_VAR, description="HTTP port.")
    data_dir: Path = Field(
        Path(".shepherd"),
        validate_default=True,
        validation_alias=DATA_DIR_VAR,
        description="State database, mirrors, worktrees and session folders; made absolute.",
    )
    agent: Literal["claude", "codex", "command"] = Field(
        "claude", validation_alias=AGENT_VAR, description="The default agent adapter."
    )
    agent_command: str | None = Field(
        None,
        validation_alias=AGENT_COMMAND_VAR,
        description="For the `command` adapter: the shell command line run for each turn.",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        validation_alias=LOG_FORMAT_VAR,
        description=(
            "The log on stderr: `text` (one line per event, with `repository=`, `issue=` and `session=` when "
            "it concerns one) or `json` (one JSON object per line, the same fields as keys)."
        ),
    )
    agent_env: tuple[str, ...] = Field(
        (),
        validation_alias=AGENT_ENV_VAR,
        description=(
            "Extra variable names passed through to agents (comma-separated in the environment). "
            "Shepherd's own secrets and settings (SHEPHERD_*, GITHUB_APP_ID, GITHUB_PRIVATE_KEY*, "
            "GITHUB_WEBHOOK_SECRET) and GitHub tokens (GH_TOKEN, GITHUB_TOKEN, ...) are refused."
        ),
    )
    agent_user: str | None = Field(
        None,
        validation_alias=AGENT_USER_VAR,
        description=(
            "The unprivileged OS user agents run as inside the sandbox (when Shepherd runs as root); "
            "by default a uid of Shepherd's own choosing (64000-64999), never Shepherd's."
        ),
    )
    sandbox: Literal["bwrap", "none"] = Field(
        "bwrap",
        validation_alias=SANDBOX_VAR,
        description=(
            "`bwrap`: every agent turn, setup and test command runs in a bubblewrap sandbox. `none`: no "
            "sandbox at all (loudly warned about at start, in `shepherd doctor` and in every status comment)."
        ),
    )
    sandbox_paths: tuple[str, ...] = Field(
        (),
        validation_alias=SANDBOX_PATHS_VAR,
        description=(
            "Comma-separated absolute paths agents see read-only beside the system folders; `PATH:rw` "
            "makes one writable."
        ),
    )
    egress: tuple[str, ...] = Field(
        (),
        validation_alias=EGRESS_VAR,
        description=(
            "Comma-separated `host[:port]` patterns (`*.example.com` allowed) agents may reach through "
            "the egress proxy besides their model endpoint; `*` allows any public host."
        ),
    )
    model_prices: str | None = Field(
        None,
        validation_alias=MODEL_PRICES_VAR,
        description=(
            "JSON prices in USD per million tokens, merged over Shepherd's own table, for agents that "
            "report tokens rather than cost (Codex), e.g. "
            '`{"gpt-5.5": {"input": 1.25, "cached_input": 0.125, "output": 10}}`; the key `codex` prices '
            "Codex when its model is not known."
        ),
    )
    max_workers: int = Field(
        4, ge=1, validation_alias=MAX_WORKERS_VAR, description="Agent processes running at once."
    )
    max_per_repo: int = Field(
        2,
        ge=1,
        validation_alias=MAX_PER_REPO_VAR,
        description="Agent processes running at once in one repository.",
    )
    dashboard_token: SecretStr | None = Field(
        None,
        validation_alias=DASHBOARD_TOKEN_VAR,
        description=(
            "Bearer token for the dashboard, JSON API and metrics. When unset, the app generates "
            "one at start and keeps it in the data folder."
        ),
    )
    write_spacing_seconds: float = Field(
        1.0,
        ge=0,
        validation_alias=WRITE_SPACING_VAR,
        description=(
            "Least time between two GitHub writes of one installation (SPEC §1.5 says 1 s); "
            "tests lower it."
        ),
    )
    worktree_pool: int = Field(
        1,
        ge=0,
        le=16,
        validation_alias=WORKTREE_POOL_VAR,
        description=(
            "Ready worktrees kept per repository at the default branch's tip, so a new session "
            "claims one instead of checking out the whole tree (0 turns the pool off)."
        ),
    )

    # -- SPEC §7: the Temporal engine ------------------------------------------------------------
    engine: Literal["local", "temporal"] = Field(
        "local",
        validation_alias=ENGINE_VAR,
        description=(
            "`local`: one process runs every session (the default). `temporal`: `serve` is a front end that "
            "turns deliveries into Temporal signals and `python -m bot worker` hosts run the sessions."
        ),
    )
    host_id: str = Field(
        "",
        validation_alias=HOST_ID_VAR,
        pattern=r"^[A-Za-z0-9._-]{0,64}$",
        description="A worker host's name, for its task queue `shepherd-host-<id>`; defaults to the machine's name.",
    )
    host_timeout_seconds: float = Field(
        60.0,
        gt=0,
        validation_alias=HOST_TIMEOUT_VAR,
        description="How long a silent worker host keeps its sessions before they move to another host.",
    )
    history_events: int = Field(
        2000,
        ge=1,
        validation_alias=HISTORY_EVENTS_VAR,
        description=(
            "How many core events an issue's workflow handles before it continues as new (carrying the "
            "session's state), so a long session's Temporal history stays small."
        ),
    )
    temporal_address: str = Field(
        "127.0.0.1:7233",
        validation_alias=TEMPORAL_ADDRESS_VAR,
        description="The Temporal frontend `host:port` the engine connects to.",
    )
    temporal_namespace: str = Field(
        "default", validation_alias=TEMPORAL_NAMESPACE_VAR, description="The Temporal namespace."
    )
    temporal_tls_ca: Path | None = Field(
        None, validation_alias=TEMPORAL_TLS_CA_VAR,
        description="TLS to Temporal: the server's CA certificate (PEM file); setting any TLS path turns TLS on.",
    )
    temporal_tls_cert: Path | None = Field(
        None, validation_alias=TEMPORAL_TLS_CERT_VAR, description="mTLS to Temporal: this client's certificate (PEM file)."
    )
    temporal_tls_key: Path | None = Field(
        None, validation_alias=TEMPORAL_TLS_KEY_VAR, description="mTLS to Temporal: this client's private key (PEM file)."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_public_url(cls, data: Any) -> Any:
        # The default depends on PORT, so it can't be a plain field default.
        if isinstance(data, Mapping):
            data = dict(data)
            if not data.get(PUBLIC_URL_VAR) and not data.get("public_url"):
                port = data.get(PORT_VAR, data.get("port", 3000))
                data.pop(PUBLIC_URL_VAR, None)
                data["public_url"] = f"http://127.0.0.1:{port}"
        return data

    @field_validator("api_url", "github_url", "public_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip()
        if not re.match(r"^https?://[^/\s]+", value):
            raise PydanticCustomError("url", BAD_URL_TEXT)
        return value.rstrip("/")

    @field_validator("data_dir")
    @classmethod
    def _make_absolute(cls, value: Path) -> Path:
        return Path(os.path.abspath(value.expanduser()))

    @field_validator("private_key", mode="before")
    @classmethod
    def _restore_line_breaks(cls, value: Any) -> Any:
        # Hosts that take single-line variables (Heroku, many CI systems) get the key with \n escapes.
        if isinstance(value, str) and "\n" not in value.strip() and "\\n" in value:
            return value.replace("\\n", "\n")
        return value

    @field_validator("private_key")
    @classmethod
    def _check_pem(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _PEM_PATTERN.search(value.get_secret_value()):
            raise PydanticCustomError("pem", NOT_PEM_TEXT)
        return value

    @field_validator("model_prices")
    @classmethod
    def _check_prices(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_prices(value)  # raises ValueError saying what is wrong
            return value
        return None

    @property
    def prices(self) -> dict[str, ModelPrice]:
        """The price table for token-reporting agents: Shepherd's, with the operator's entries over it."""
        return parse_prices(self.model_prices) if self.model_prices else dict(DEFAULT_PRICES)

    @field_validator("agent_command", "agent_user")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("sandbox", mode="before")
    @classmethod
    def _sandbox_mode(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("sandbox_paths", "egress", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("sandbox_paths")
    @classmethod
    def _check_sandbox_paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from bot.agent.sandbox import parse_sandbox_paths

        try:
            parse_sandbox_paths(",".join(value))
        except ValueError as error:
            raise PydanticCustomError("sandbox_paths", "{why}", {"why": str(error)}) from None
        return value

    @field_validator("agent_env", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("agent_env")
    @classmethod
    def _check_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        complaints = []
        bad = [name for name in value if not _ENV_NAME_PATTERN.match(name)]
        if bad:
            complaints.append(
                BAD_ENV_NAME_TEXT.format(
                    names=", ".join(map(repr, bad)), verb="is" if len(bad) == 1 else "are"
                )
            )
        refused = _refused_agent_env_names(value)
        if refused:
            complaints.append(REFUSED_AGENT_ENV_TEXT.format(names=", ".join(refused)))
        if complaints:
            raise PydanticCustomError("env_names", "; ".join(complaints))
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        problem = _missing_credentials(
            self.app_id is not None, self.private_key is not None, self.webhook_secret is not None
        )
        if problem:
            raise PydanticCustomError("credentials", problem)
        if self.agent == "command" and not self.agent_command:
            raise PydanticCustomError("command", COMMAND_MISSING_TEXT)
        return self

    @property
    def mode(self) -> Mode:
        """`github` when the App's id, key and secret are all set; `setup` when none is."""
        return "github" if self.app_id is not None else "setup"

    @property
    def host_name(self) -> str:
        """This machine's name in the operator's views (and a worker host's task queue): SHEPHERD_HOST_ID,
        else the machine's own name. Under the local engine every session runs here."""
        return self.host_id or socket.gethostname()

    def operator_limits(self) -> OperatorLimits:
        """The limits a repository's `.github/shepherd.yml` may tighten but never loosen."""
        adapters = ("claude", "codex", "command") if self.agent_command else ("claude", "codex")
        return OperatorLimits(agent=self.agent, adapters=adapters, max_per_repo=self.max_per_repo,
                              egress=self.egress)

    def with_credentials(self, app_id: int, private_key: str, webhook_secret: str) -> Settings:
        """These settings in GitHub mode, e.g. right after the setup flow registered the App."""
        fields = self.model_dump()
        fields.update(app_id=app_id, private_key=private_key, webhook_secret=webhook_secret)
        return Settings.model_validate(fields)


def _read_sources(environ: Mapping[str, str], env_file: Path | None) -> dict[str, str]:
    """Merge `.env` and the environment; the environment wins, and empty values count as unset."""
    merged: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        # No ${VAR} interpolation: a secret that happens to contain "$" must arrive unchanged.
        for name, value in dotenv_values(env_file, interpolate=False).items():
            if value is not None and value.strip() != "":
                merged[name] = value
    for name in VARIABLES:
        value = environ.get(name)
        if value is not None and value.strip() != "":
            merged[name] = value
    return {name: merged[name] for name in VARIABLES if name in merged}


# Pydantic's wording for the few kinds of mistake an operator can make here, said plainly.
_PLAIN_MESSAGES = {
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_type": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be greater than {gt}",
    "less_than_equal": "must be at most {le}",
    "literal_error": "must be one of {expected}",
}


def _describe_error(error: Mapping[str, Any]) -> str:
    loc = error.get("loc") or ()
    name = str(loc[0]) if loc else ""
    message = str(error["msg"])
    if not name:
        return message
    if name in SECRET_VARIABLES or error.get("type") in {"env_names", "pem"}:
        return f"{name}: {message}"
    template = _PLAIN_MESSAGES.get(str(error.get("type")))
    if template:
        message = template.format(**(error.get("ctx") or {}))
    return f"{name}: {message}, got {error.get('input')!r}"


def load_settings(
    environ: Mapping[str, str] | None = None, *, env_file: Path | None = Path(".env")
) -> Settings:
    """Build the settings from the environment (default `os.environ`) and `env_file` when present.

    Raises `SettingsError` naming every bad or missing variable.
    """
    raw = _read_sources(os.environ if environ is None else environ, env_file)
    problems: list[str] = []

    key_path = raw.pop(PRIVATE_KEY_PATH_VAR, None)
    if key_path is not None:
        if PRIVATE_KEY_VAR in raw:
            problems.append(BOTH_KEY_SOURCES_TEXT)
        else:
            try:
                raw[PRIVATE_KEY_VAR] = Path(key_path).expanduser().read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                reason = getattr(error, "strerror", None) or type(error).__name__
                problems.append(
                    f"{PRIVATE_KEY_PATH_VAR}: "
                    + KEY_FILE_UNREADABLE_TEXT.format(path=key_path, reason=reason)
                )

    has_key = PRIVATE_KEY_VAR in raw or key_path is not None
    credentials = _missing_credentials(APP_ID_VAR in raw, has_key, WEBHOOK_SECRET_VAR in raw)
    if credentials:
        problems.append(credentials)

    if raw.get(AGENT_VAR, "").strip() == "command" and AGENT_COMMAND_VAR not in raw:
        problems.append(COMMAND_MISSING_TEXT)

    user = raw.get(AGENT_USER_VAR, "").strip()
    if user:
        try:
            pwd.getpwnam(user)
        except KeyError:
            problems.append(f"{AGENT_USER_VAR}: " + UNKNOWN_USER_TEXT.format(user=user))

    settings: Settings | None = None
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as error:
        for detail in error.errors(include_url=False):
            if detail["type"] in {"credentials", "command"}:
                continue  # already judged above from what was set, including an unreadable key file
            message = _describe_error(detail)
            if message not in problems:
                problems.append(message)

    if problems or settings is None:
        raise SettingsError(problems)
    return settings
