"""The ``clicktrail`` command. Each command prints its result alone on stdout; logs go to stderr."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import click

from clicktrail import config
from clicktrail.errors import ClicktrailError, RequestError


def _settings() -> config.Settings:
    return config.load()


def _redis(settings: config.Settings):
    from clicktrail import redis_client

    return redis_client.patient(settings.redis.url)


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(stream=sys.stderr, level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class _Group(click.Group):
    """Turn clicktrail's own errors into one clear line and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClicktrailError as exc:
            message = exc.message if isinstance(exc, RequestError) else str(exc)
            click.echo(f"error: {message}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
def main() -> None:
    """clicktrail: self-hosted pixel and conversion tracking."""


@main.command()
@click.option("--cluster", default="", metavar="NAME",
              help="create the schema on every node of this cluster of the servers' remote_servers "
                   "configuration: local tables and Distributed tables over them (docs/scaling.md)")
def migrate(cluster: str) -> None:
    """Create or upgrade the ClickHouse schema (idempotent); print the schema version."""
    from clicktrail import clickhouse, schema
    from clicktrail import cluster as ch_cluster

    settings = _settings()
    url = settings.clickhouse.url
    db = clickhouse.database_of(url)
    client = clickhouse.connect(url, database="default")
    applied = ch_cluster.migrate(url, db, cluster) if cluster else schema.migrate(client, db)
    for migration in applied:
        click.echo(f"applied {migration.version}: {migration.name}", err=True)
    click.echo(schema.current_version(client, db))


@main.command()
@click.option("--bind", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to listen on")
@click.option("--workers", default=lambda: os.cpu_count() or 2, type=int, help="processes [default: cores]")
@click.option("--threads", default=4, show_default=True, type=int, help="threads per process")
def collector(bind: str, workers: int, threads: int) -> None:
    """Run the collector under gunicorn with the production settings."""
    from clicktrail import serve

    settings = _settings()
    serve.run("collector.app:create_app", bind, workers, threads, settings.paths.data_dir, "collector")


@main.command()
@click.option("--bind", default="127.0.0.1:8081", show_default=True, help="HOST:PORT to listen on")
@click.option("--workers", default=lambda: os.cpu_count() or 2, type=int, help="processes [default: cores]")
@click.option("--threads", default=4, show_default=True, type=int, help="threads per process")
@click.option("--nice", default=0, show_default=True, type=click.IntRange(0, 19),
              help="lower the API's CPU priority by this much, so that on shared cores event collection goes first")
def api(bind: str, workers: int, threads: int, nice: int) -> None:
    """Run the API (imports, reports, the optimizer feed, diagnostics, the dashboard) under gunicorn."""
    from clicktrail import serve

    if nice:
        os.nice(nice)  # inherited by gunicorn's workers
    settings = _settings()
    serve.run("reporting.api:create_app", bind, workers, threads, settings.paths.data_dir, "api")


def _run_worker(name: str, worker_class, log_level: str, **options) -> None:
    """Run a Redis → ClickHouse worker until a signal: the first finishes the batch, a second exits."""
    from clicktrail import clickhouse
    from clicktrail.lifecycle import ForcedStop, StopFlag

    _setup_logging(log_level)
    settings = _settings()
    url = settings.clickhouse.url
    stop = StopFlag()
    stop.install(name)
    # Neither connects here: the worker waits for Redis as it starts (its consumer group), and for
    # ClickHouse at its first insert or tick, which retry with backoff while it is unreachable.
    worker = worker_class(settings, _redis(settings), clickhouse.connect(url), clickhouse.database_of(url), stop,
                          **options)
    try:
        worker.run()
    except ForcedStop:
        sys.exit(1)


@main.command()
@click.option("--log-level", default="INFO", show_default=True)
def attributor(log_level: str) -> None:
    """Attribute newly stored conversions (and restate those late touchpoints change)."""
    from attribution.engine import Attributor

    _run_worker("attributor", Attributor, log_level)


@main.command()
@click.option("--log-level", default="INFO", show_default=True)
def scheduler(log_level: str) -> None:
    """Deliver due scheduled reports and evaluate alert rules (one scheduler leads at a time; others stand by)."""
    from reporting.scheduler import Scheduler

    _run_worker("scheduler", Scheduler, log_level)


def _shard_list(ctx, param, value: str | None) -> list[int] | None:
    """``--shards 0,2``: shard numbers below CLICKTRAIL_STREAM_SHARDS; unset: all of them."""
    if value is None:
        return None
    shards = _settings().stream.shards
    try:
        chosen = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise click.BadParameter("a comma-separated list of shard numbers, e.g. 0,2") from None
    if not chosen or not all(0 <= shard < shards for shard in chosen):
        raise click.BadParameter(f"shard numbers go from 0 to {shards - 1} (CLICKTRAIL_STREAM_SHARDS={shards})")
    return chosen


@main.command()
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--shards", callback=_shard_list, help="stream shards to read, e.g. 0,2 (default: all)")
def sink(log_level: str, shards: list[int] | None) -> None:
    """Move events from the Redis Stream into ClickHouse; several may run at once."""
    from sink.worker import Sink

    _run_worker("sink", Sink, log_level, shards=shards)


@main.command()
@click.option("--bind", default="127.0.0.1:8080", show_default=True, help="collector HOST:PORT")
@click.option("--api-bind", default="127.0.0.1:8081", show_default=True, help="API HOST:PORT")
@click.option("--sinks", default=1, show_default=True, type=int, help="sink processes")
@click.option("--attributors", default=1, show_default=True, type=click.IntRange(min=1),
              help="attributor processes, sharing CLICKTRAIL_ATTRIBUTION_PARTITIONS")
@click.option("--no-services", is_flag=True, help="do not start Redis or ClickHouse")
def up(bind: str, api_bind: str, sinks: int, attributors: int, no_services: bool) -> None:
    """Start everything (local Redis and ClickHouse if none runs, migrations, collector, sinks,
    attributors, scheduler, API) until Ctrl-C."""
    from clicktrail import supervisor

    _setup_logging()
    supervisor.up(_settings(), bind=bind, api_bind=api_bind, sinks=sinks, attributors=attributors,
                  start_services=not no_services)


@main.command()
@click.option("--max-age", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="seconds since the worker's last heartbeat after which it counts as stuck")
def alive(max_age: float) -> None:
    """Exit 0 when this container's sink, attributor or scheduler is working (for a healthcheck), else 1.

    Reads CLICKTRAIL_HEARTBEAT_FILE, which the worker touches while its loop turns.
    """
    from clicktrail.lifecycle import heartbeat_age

    path = _settings().paths.heartbeat_file
    if not path:
        raise click.UsageError("CLICKTRAIL_HEARTBEAT_FILE is not set, so no worker leaves a heartbeat")
    age = heartbeat_age(path)
    if age is None:
        click.echo(f"no heartbeat yet at {path}", err=True)
        sys.exit(1)
    if age > max_age:
        click.echo(f"last heartbeat {age:.0f} s ago (more than {max_age:.0f} s): stuck or stopped", err=True)
        sys.exit(1)
    click.echo(f"alive: last heartbeat {age:.1f} s ago")


@main.command()
@click.option("--advertiser", required=True, help="whose data (only this advertiser's is touched)")
@click.option("--email-sha256", "emails", multiple=True, help="SHA-256 hex of the normalised email")
@click.option("--phone-sha256", "phones", multiple=True, help="SHA-256 hex of the E.164 phone")
@click.option("--external-id-sha256", "external_ids", multiple=True, help="SHA-256 hex of the external id")
@click.option("--ttp", "browser_ids", multiple=True, help="a browser id (_ttp cookie)")
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait until it is done, then print its record")
@click.option("--timeout", default=900.0, show_default=True, type=float, help="seconds to wait at most")
def erase(advertiser: str, emails, phones, external_ids, browser_ids, wait: bool, timeout: float) -> None:
    """Erase one person's data (events, touchpoints, identity links, credits) for one advertiser.

    Queued like `POST /v1/erasure`; the attributor does the work. Prints the request id, then,
    with --wait, the audit record once done (it holds no identifier).
    """
    import json

    from clicktrail.errors import BadRequest
    from pixel import erasure

    user = {kind: list(values) for kind, values in (("email", emails), ("phone", phones),
                                                  ("external_id", external_ids), ("ttp", browser_ids)) if values}
    try:
        identifiers = erasure.parse_identifiers({"user": user})
    except BadRequest as exc:
        raise click.UsageError(exc.message.replace("user.", "--")) from exc
    r = _redis(_settings())
    request_id = erasure.submit(r, advertiser, identifiers, "cli")
    click.echo(request_id)
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while (record := erasure.audit(r, advertiser, request_id))["status"] != erasure.DONE:
        if time.monotonic() > deadline:
            click.echo(f"not done after {timeout:.0f} s (is an attributor running?); it goes on: "
                       f"GET /v1/erasure/{request_id}", err=True)
            sys.exit(1)
        time.sleep(0.5)
    click.echo(json.dumps(record, sort_keys=True))


@main.command()
def services() -> None:
    """Start local Redis and ClickHouse where none listens; print their URLs."""
    from clicktrail import services as svc

    settings = _settings()
    data = Path(settings.paths.data_dir)
    svc.ensure_redis(settings.redis.url, data)
    svc.ensure_clickhouse(settings.clickhouse.url, data)
    click.echo(settings.redis.url)
    click.echo(settings.clickhouse.url)


@main.group()
def pixel() -> None:
    """Register pixels and print their snippets."""


@pixel.command("create")
@click.option("--advertiser", required=True, help="advertiser id (created if new)")
@click.option("--domain", "domains", multiple=True, required=True, help="site domain allowed to send events")
def pixel_create(advertiser: str, domains: tuple[str, ...]) -> None:
    """Register a pixel for an advertiser and its site domains; print the pixel id."""
    from pixel import registry

    click.echo(registry.create_pixel(_redis(_settings()), advertiser, list(domains)))


@pixel.command("snippet")
@click.argument("pixel_id")
@click.option("--collector-url", default=None, help="collector base URL [default: CLICKTRAIL_PUBLIC_URL]")
def pixel_snippet(pixel_id: str, collector_url: str | None) -> None:
    """Print the HTML snippet to paste into a site's <head>."""
    from pixel import registry, snippet

    settings = _settings()
    if registry.get_pixel(_redis(settings), pixel_id) is None:
        raise click.ClickException(f"pixel {pixel_id!r} is not registered (clicktrail pixel create ...)")
    click.echo(snippet.build_snippet(pixel_id, (collector_url or settings.site.public_url).rstrip("/")))


@main.group()
def source() -> None:
    """Register event sources that are not pixels: TikTok App IDs, offline and CRM event sets."""


@source.command("add")
@click.option("--advertiser", required=True, help="advertiser id (created if new)")
@click.option("--app-id", help="a TikTok App ID: takes Events API 2.0 events with event_source=app")
@click.option("--offline-set", help="an offline event set id: takes event_source=offline")
@click.option("--crm-set", help="a CRM event set id: takes event_source=crm")
@click.option("--name", default="", help="a name to tell it apart (e.g. 'Shop for iOS')")
def source_add(advertiser: str, app_id: str | None, offline_set: str | None, crm_set: str | None,
               name: str) -> None:
    """Register an app or event set as an event source of the advertiser; print its id."""
    from clicktrail.errors import RegistryError
    from pixel import sources

    given = [(kind, value) for kind, value in (("app", app_id), ("offline", offline_set), ("crm", crm_set))
             if value is not None]
    if len(given) != 1:
        raise RegistryError("give exactly one of --app-id, --offline-set or --crm-set")
    ((kind, source_id),) = given
    sources.add_source(_redis(_settings()), advertiser, kind, source_id, name)
    click.echo(source_id)


@source.command("list")
@click.option("--advertiser", required=True)
def source_list(advertiser: str) -> None:
    """Print the advertiser's event sources that are not pixels, one JSON object a line."""
    import json

    from pixel import sources

    for source_id, record in sources.list_sources(_redis(_settings()), advertiser).items():
        click.echo(json.dumps({"event_source_id": source_id, "event_source": record["kind"],
                               "name": record["name"], "created_at": record["created_at"]}))


@source.command("remove")
@click.argument("source_id")
@click.option("--advertiser", required=True)
def source_remove(source_id: str, advertiser: str) -> None:
    """Unregister an event source: its events are refused from now on, those stored stay; print its id."""
    from pixel import sources

    sources.remove_source(_redis(_settings()), advertiser, source_id)
    click.echo(source_id)


@main.command("click-url")
@click.option("--advertiser", required=True)
@click.option("--campaign", required=True)
@click.option("--adgroup", required=True)
@click.option("--ad", required=True)
@click.option("--landing", required=True, help="landing page URL on one of the advertiser's site domains")
def click_url(advertiser: str, campaign: str, adgroup: str, ad: str, landing: str) -> None:
    """Print a signed click-tracking URL for an ad."""
    from pixel.click_urls import check_landing, make_token
    from clicktrail.errors import RegistryError
    from pixel import registry

    settings = _settings()
    host = check_landing(landing)
    domains = registry.advertiser_domains(_redis(settings), advertiser)
    if not registry.host_allowed(host, domains):
        known = ", ".join(domains) or "none; register a pixel first"
        raise RegistryError(f"landing host {host!r} is not a site domain of advertiser {advertiser!r} ({known})")
    token = make_token(settings.site.secret_key, advertiser, campaign, adgroup, ad, landing)
    click.echo(f"{settings.site.public_url.rstrip('/')}/r/{token}")


@main.group("dead-letters")
def dead_letters() -> None:
    """Inspect and requeue what the sink could not store."""


@dead_letters.command("list")
@click.option("--count", default=100, show_default=True, type=int)
def dead_letters_list(count: int) -> None:
    """Print the oldest dead letters, one JSON object a line."""
    import json

    from sink import dead_letters as letters

    for letter in letters.listing(_redis(_settings()), count):
        click.echo(json.dumps(letter))


@dead_letters.command("requeue")
@click.option("--count", default=1000, show_default=True, type=int)
def dead_letters_requeue(count: int) -> None:
    """Move the oldest dead letters back to the event stream; print how many moved."""
    from sink import dead_letters as letters

    settings = _settings()
    click.echo(letters.requeue(_redis(settings), count, settings.stream.shards))


@main.group()
def advertiser() -> None:
    """Advertiser attribution settings."""


@advertiser.command("set")
@click.option("--advertiser", "advertiser_id", required=True)
@click.option("--click-window", type=int, help="click-through window in days: 1, 7, 14 or 28")
@click.option("--view-window", type=int, help="view-through window in days: 0 (off), 1 or 7")
@click.option("--counting", help="every (each conversion counts) or once (first conversion per click)")
@click.option("--event", help="apply --counting to this event name only")
@click.option("--model", help="model of the optimizer feed: last_click (default), first_click, linear, "
              "time_decay or position_based")
@click.option("--timezone", help="IANA time zone of reports and cost days, e.g. Europe/Berlin")
@click.option("--currency", help="ISO 4217 currency of spend and values, e.g. EUR")
@click.option("--retention-days", "retention", metavar="N|forever",
              help="keep events, touchpoints, identity links and credits N days (at least 1), then remove "
              "them (daily, or `clicktrail retention apply`); forever (the default) keeps everything")
def advertiser_set(advertiser_id: str, click_window: int | None, view_window: int | None, counting: str | None,
                   event: str | None, model: str | None, timezone: str | None, currency: str | None,
                   retention: str | None) -> None:
    """Change attribution settings (they apply from now on); print them as JSON."""
    import json

    from pixel import registry

    retention_days: int | str | None = retention
    if retention is not None and retention != registry.FOREVER:
        try:
            retention_days = int(retention)
        except ValueError:
            raise click.BadParameter(f"{retention!r} is not a whole number of days or {registry.FOREVER!r}",
                                     param_hint="--retention-days") from None
    settings = registry.update_settings(_redis(_settings()), advertiser_id, click_window_days=click_window,
                                        view_window_days=view_window, counting=counting, event=event,
                                        model=model, timezone=timezone, currency=currency,
                                        retention_days=retention_days)
    warning = registry.retention_warning(settings)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    click.echo(json.dumps(settings, sort_keys=True))


@main.group()
def retention() -> None:
    """Remove data past each advertiser's retention (the attributor does it daily)."""


@retention.command("apply")
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="wait until ClickHouse has finished the deletions")
@click.option("--timeout", default=3600.0, show_default=True, type=float, help="seconds to wait at most")
def retention_apply(wait: bool, timeout: float) -> None:
    """Run the daily retention job now; print what it removed as JSON.

    Rows of every advertiser with --retention-days older than its cutoff leave ClickHouse
    (whole months by partition drops, the rest by mutations, which finish in the background), and
    entries older than CLICKTRAIL_BUFFER_MAX_AGE_DAYS leave the event stream and the dead letters.
    """
    import json

    from attribution.retention import Retention
    from clicktrail import clickhouse

    _setup_logging("WARNING")
    settings = _settings()
    url = settings.clickhouse.url
    job = Retention(settings, _redis(settings), clickhouse.connect(url), clickhouse.database_of(url))
    done = job.apply()
    if wait and not job.wait(timeout):
        click.echo(f"deletions not finished after {timeout:.0f} s; they go on in ClickHouse", err=True)
        click.echo(json.dumps(done, sort_keys=True))
        sys.exit(1)
    click.echo(json.dumps(done, sort_keys=True))


@main.group()
def token() -> None:
    """Create API tokens."""


@token.command("create")
@click.option("--advertiser", required=True, help="advertiser id (created if new)")
@click.option("--scope", "scopes", required=True, help="comma-separated: events, reports, optimizer, adserver, privacy")
def token_create(advertiser: str, scopes: str) -> None:
    """Create an API token and print it (stored only as a hash: it cannot be shown again)."""
    from pixel import registry

    click.echo(registry.create_token(_redis(_settings()), advertiser, registry.parse_scopes(scopes)))


if __name__ == "__main__":
    main()
