"""Schema migrations by version (SQLite's `PRAGMA user_version`).

Append a new `Migration` for every change; never edit one that has shipped. Money is integer
fen (0.18 CNY = 18); timestamps are ISO-8601 UTC text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "generation jobs: the queue's truth and the ledger",
        (
            """
            CREATE TABLE jobs (
                -- the Discord interaction id, so a replayed event cannot create a second job;
                -- a locally made snowflake-like id for the CLI
                id              INTEGER PRIMARY KEY,
                guild_id        INTEGER,
                channel_id      INTEGER,
                user_id         INTEGER,
                requester       TEXT    NOT NULL,            -- 'cli' or the Discord user id
                command         TEXT    NOT NULL,            -- imagine | poster | couplet | reroll | cli
                style           TEXT,
                model           TEXT    NOT NULL,
                prompt          TEXT    NOT NULL,
                negative_prompt TEXT    NOT NULL DEFAULT '',
                size            TEXT    NOT NULL,
                prompt_extend   INTEGER NOT NULL,
                watermark       INTEGER NOT NULL,
                inputs_json     TEXT    NOT NULL DEFAULT '{}',  -- the command's own fields (poster title...)
                state           TEXT    NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'submitting', 'generated', 'delivered', 'failed')),
                attempts        INTEGER NOT NULL DEFAULT 0,  -- upstream submissions started
                request_id      TEXT,                        -- the upstream's id, for support
                image_url       TEXT,
                image_sha256    TEXT,                        -- the downloaded bytes in the image store
                revised_prompt  TEXT,
                error_code      TEXT,
                error_message   TEXT,
                -- billed to us by the provider / charged to the requester (delivered images only)
                upstream_fen    INTEGER NOT NULL DEFAULT 0 CHECK (upstream_fen >= 0),
                cost_fen        INTEGER NOT NULL DEFAULT 0 CHECK (cost_fen >= 0),
                queued_at       TEXT    NOT NULL,
                started_at      TEXT,
                generated_at    TEXT,
                finished_at     TEXT
            )
            """,
            "CREATE INDEX jobs_unfinished ON jobs(queued_at) WHERE state IN ('queued', 'submitting', 'generated')",
            "CREATE INDEX jobs_by_guild ON jobs(guild_id, queued_at)",
            "CREATE INDEX jobs_by_requester ON jobs(requester, queued_at)",
        ),
    ),
    Migration(
        2,
        "bookkeeping, guild settings and quota counters",
        (
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """
            CREATE TABLE guild_settings (
                guild_id      INTEGER PRIMARY KEY,
                settings_json TEXT NOT NULL DEFAULT '{}',
                updated_at    TEXT NOT NULL,
                updated_by    INTEGER
            )
            """,
            """
            -- reserved-or-charged images (or fen) per subject and period, changed only by one
            -- conditional UPSERT so concurrent requests can never overshoot a limit
            CREATE TABLE quota_counters (
                scope   TEXT    NOT NULL,   -- e.g. 'user_day', 'guild_month_fen'
                subject TEXT    NOT NULL,   -- e.g. '<guild>:<user>' or '<guild>'
                period  TEXT    NOT NULL,   -- e.g. '2026-11-25' or '2026-11'
                used    INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
                PRIMARY KEY (scope, subject, period)
            )
            """,
        ),
    ),
    Migration(
        3,
        "Discord delivery: the reply's credentials live in the open job's row only",
        (
            # the 15-minute interaction token: erased (set NULL) as soon as the job ends
            "ALTER TABLE jobs ADD COLUMN interaction_token TEXT",
            "ALTER TABLE jobs ADD COLUMN token_expires_at TEXT",
            "ALTER TABLE jobs ADD COLUMN message_id INTEGER",  # the reply message to edit in place
            "ALTER TABLE jobs ADD COLUMN reroll_of INTEGER REFERENCES jobs(id)",
        ),
    ),
    Migration(
        4,
        "limits and moderation: quota reservations per job, blocks, prompt rules, audit log, refusals",
        (
            # the counters a job reserved (scope, subject, period, amount), refunded exactly on failure
            "ALTER TABLE jobs ADD COLUMN quota_json TEXT NOT NULL DEFAULT '[]'",
            """
            CREATE TABLE blocks (
                guild_id   INTEGER NOT NULL,
                user_id    INTEGER NOT NULL,
                reason     TEXT    NOT NULL,
                expires_at TEXT,                 -- NULL: until unblocked
                created_by INTEGER NOT NULL,
                created_at TEXT    NOT NULL,
                PRIMARY KEY (guild_id, user_id)
            )
            """,
            """
            CREATE TABLE prompt_rules (
                id         INTEGER PRIMARY KEY AUTOINCREMENT,
                guild_id   INTEGER NOT NULL,
                kind       TEXT    NOT NULL CHECK (kind IN ('word', 'regex')),
                pattern    TEXT    NOT NULL,
                reason     TEXT    NOT NULL,     -- the public reason a refused user is told
                created_by INTEGER NOT NULL,
                created_at TEXT    NOT NULL
            )
            """,
            "CREATE INDEX prompt_rules_by_guild ON prompt_rules(guild_id)",
            """
            CREATE TABLE audit_log (
                id           INTEGER PRIMARY KEY AUTOINCREMENT,
                guild_id     INTEGER,
                actor        TEXT NOT NULL,      -- a Discord user id, or 'cli'
                action       TEXT NOT NULL,
                details_json TEXT NOT NULL,
                at           TEXT NOT NULL
            )
            """,
            "CREATE INDEX audit_log_by_guild ON audit_log(guild_id, id)",
            """
            CREATE TABLE refusals (
                id       INTEGER PRIMARY KEY AUTOINCREMENT,
                guild_id INTEGER,
                user_id  INTEGER,
                reason   TEXT NOT NULL,          -- which limit or rule refused the request
                detail   TEXT,
                at       TEXT NOT NULL
            )
            """,
            "CREATE INDEX refusals_by_guild ON refusals(guild_id, at)",
        ),
    ),
    Migration(
        5,
        "the result cache: an index of delivered images by cache key; cache hits in the ledger",
        (
            """
            CREATE TABLE image_cache (
                key           TEXT PRIMARY KEY,   -- presets.cache_key: prompt, size, negative, extend, watermark, model
                sha256        TEXT    NOT NULL,   -- the file in the image store (CACHE_DIR)
                bytes         INTEGER NOT NULL,
                source_job_id INTEGER,
                request_id    TEXT,
                created_at    TEXT    NOT NULL,   -- for the time-to-live
                last_used_at  TEXT    NOT NULL    -- for least-recently-used eviction
            )
            """,
            "CREATE INDEX image_cache_by_use ON image_cache(last_used_at)",
            "CREATE INDEX image_cache_by_sha ON image_cache(sha256)",
            "ALTER TABLE jobs ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0",
        ),
    ),
    Migration(
        6,
        "allowed channels and role limits in their own tables: each admin change is one statement",
        (
            """
            CREATE TABLE guild_allowed_channels (
                guild_id   INTEGER NOT NULL,
                channel_id INTEGER NOT NULL,
                PRIMARY KEY (guild_id, channel_id)
            )
            """,
            """
            CREATE TABLE guild_role_limits (
                guild_id INTEGER NOT NULL,
                role_id  INTEGER NOT NULL,
                -- images per day / month for members with the role; NULL = unlimited
                daily    INTEGER CHECK (daily >= 0),
                monthly  INTEGER CHECK (monthly >= 0),
                -- 1: the role does not set that period, the guild's own limit applies (the column is unused)
                daily_follows_guild   INTEGER NOT NULL DEFAULT 0 CHECK (daily_follows_guild IN (0, 1)),
                monthly_follows_guild INTEGER NOT NULL DEFAULT 0 CHECK (monthly_follows_guild IN (0, 1)),
                PRIMARY KEY (guild_id, role_id)
            )
            """,
            # move what guild_settings.settings_json held (a list of ids; a map role -> {daily, monthly})
            """
            INSERT OR IGNORE INTO guild_allowed_channels (guild_id, channel_id)
            SELECT s.guild_id, CAST(c.value AS INTEGER)
            FROM guild_settings AS s, json_each(s.settings_json, '$.allowed_channels') AS c
            WHERE json_type(s.settings_json, '$.allowed_channels') = 'array'
            """,
            """
            INSERT OR IGNORE INTO guild_role_limits
                (guild_id, role_id, daily, monthly, daily_follows_guild, monthly_follows_guild)
            SELECT s.guild_id, CAST(r.key AS INTEGER),
                   json_extract(r.value, '$.daily'), json_extract(r.value, '$.monthly'),
                   json_type(r.value, '$.daily') IS NULL, json_type(r.value, '$.monthly') IS NULL
            FROM guild_settings AS s, json_each(s.settings_json, '$.role_limits') AS r
            WHERE json_type(s.settings_json, '$.role_limits') = 'object'
            """,
            """
            UPDATE guild_settings
            SET settings_json = json_remove(settings_json, '$.allowed_channels', '$.role_limits')
            """,
        ),
    ),
    Migration(
        7,
        "the shared queue: jobs claimed by a process under a lease, guilds and users in turns",
        (
            "ALTER TABLE jobs ADD COLUMN queue_guild TEXT",  # 'guild:<id>' or 'cli': the job's queue
            # FIFO inside a user's queue (negative: pushed to the front)
            "ALTER TABLE jobs ADD COLUMN fair_order INTEGER",
            "ALTER TABLE jobs ADD COLUMN claimed_by TEXT",  # the process working on it
            "ALTER TABLE jobs ADD COLUMN lease_until REAL",  # Unix seconds; renewed while it works
            "CREATE INDEX jobs_waiting ON jobs(queue_guild, requester, fair_order)"
            " WHERE state = 'queued' AND claimed_by IS NULL",
            "CREATE INDEX jobs_claimed ON jobs(claimed_by, lease_until) WHERE claimed_by IS NOT NULL",
            """
            CREATE TABLE queue_turns (
                guild_key TEXT    NOT NULL,
                user_key  TEXT    NOT NULL,  -- '': the guild's own turn among the guilds
                turn      INTEGER NOT NULL,  -- lowest goes next; a served guild or user gets a new, larger one
                PRIMARY KEY (guild_key, user_key)
            )
            """,
            "CREATE INDEX queue_turns_in_order ON queue_turns(guild_key, turn)",
            "CREATE INDEX queue_turns_of_guilds ON queue_turns(user_key, turn)",
            "CREATE TABLE queue_counter (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)",
            "INSERT INTO queue_counter (id, value) VALUES (1, 0)",
        ),
    ),
    Migration(
        8,
        "the languages of a job's reader and server (Discord's codes): replies and channel posts in them",
        (
            "ALTER TABLE jobs ADD COLUMN locale TEXT",  # the requester's client ('zh-CN'); NULL: English
            "ALTER TABLE jobs ADD COLUMN guild_locale TEXT",  # the server's preferred locale
        ),
    ),
    Migration(
        9,
        "private and spoiler results, where each result was posted (for /history), personal defaults (/settings)",
        (
            # an ephemeral result only the requester sees: never posted in the channel
            "ALTER TABLE jobs ADD COLUMN is_private INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN spoiler INTEGER NOT NULL DEFAULT 0",  # the image is posted as a spoiler
            # the message that carries the image: the reply, or the channel post once the token expired
            "ALTER TABLE jobs ADD COLUMN result_message_id INTEGER",
            # where each resolved value came from ({"style": "yours", "size": "option", ...}), for Details
            "ALTER TABLE jobs ADD COLUMN sources_json TEXT NOT NULL DEFAULT '{}'",
            "CREATE INDEX jobs_history ON jobs(guild_id, user_id, finished_at) WHERE state = 'delivered'",
            """
            CREATE TABLE user_settings (
                user_id       INTEGER PRIMARY KEY,
                style         TEXT,     -- NULL: not set (the command's own default applies)
                size          TEXT,
                prompt_extend INTEGER,
                watermark     INTEGER,
                is_private    INTEGER,
                updated_at    TEXT NOT NULL
            )
            """,
            """
            CREATE TABLE guild_spoiler_channels (
                guild_id   INTEGER NOT NULL,
                channel_id INTEGER NOT NULL,  -- every image made here is posted as a spoiler
                PRIMARY KEY (guild_id, channel_id)
            )
            """,
        ),
    ),
)

LATEST_VERSION = max(m.version for m in MIGRATIONS)
