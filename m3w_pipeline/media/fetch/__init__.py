"""Fetch media referenced by crawled pages: polite, bounded, safe, and accounted for.

Common Crawl WARCs hold the HTML of a page but almost never the images it shows,
so the M3W build fetches them itself. Every URL handed to a `Fetcher` ends with
exactly one status from `FETCH_STATUSES` (never an exception), so the job can
count outcomes per status and write them as a status table (`status_table`).

One request, in order:
  parse URL (http/https only) -> the origin's robots.txt allows the path for our agent token
  (fetched once per origin and `robots_cache_s`, through the same checks) -> resolve the host
  ourselves (or take a host_overrides address) -> refuse the name if any address is non-public
  -> take a per-host slot (concurrency limit + politeness delay) -> connect to exactly the checked
  IPs (no second DNS lookup, so DNS rebinding cannot swap them) -> send GET with our User-Agent
  -> read the head -> redirect (checked again from the top) | retryable failure (backoff,
  Retry-After) | opt-out headers (stop before the body) | Content-Length over the cap
  -> stream the body, stopping at max_bytes + 1 -> sniff magic bytes: media or not-media.

The modules, one concern each (everything public is importable from here):
  status     the status names, FetchResult, the status table, which failures are retried
  policy     what may be taken: public-address checks and host overrides, robots.txt, opt-out headers
  transport  request targets, pinned HTTP/HTTPS connections, the proxy tunnel, the pool, capped bodies
  fetcher    Fetcher: redirects, attempts, backoff, Retry-After, per-host gates
"""
from m3w_pipeline.media.fetch.fetcher import Fetcher
from m3w_pipeline.media.fetch.policy import Resolver, agent_token, is_public_address, opt_out_reason, parse_host_overrides, system_resolver
from m3w_pipeline.media.fetch.status import FETCH_STATUSES, OK, FetchResult, status_table
from m3w_pipeline.media.fetch.transport import sniff_media_type

__all__ = [
    "FETCH_STATUSES",
    "OK",
    "FetchResult",
    "Fetcher",
    "Resolver",
    "agent_token",
    "is_public_address",
    "opt_out_reason",
    "parse_host_overrides",
    "sniff_media_type",
    "status_table",
    "system_resolver",
]
