"""FhirPoller: incremental DiagnosticReport search with a cursor that loses nothing.

The cursor is the high-water mark (``meta.lastUpdated``, ``id``) of the reports
read so far plus the (id, ``meta.versionId``) of every report whose lastUpdated is
inside the overlap window behind it. Each traversal searches
``_lastUpdated=ge(high water - overlap)`` sorted by ``_lastUpdated`` and follows
``Bundle.link[next]`` as an opaque URL; reports already seen at the same version
are dropped. So:

* resources sharing one lastUpdated across a page boundary are neither lost nor
  repeated (``ge`` re-reads the boundary, the seen set drops the repeats);
* a transaction committed late with an older lastUpdated (up to the overlap) is
  still found by the next traversal;
* the cursor is the task's source offset, committed with each page's records, so
  a restart (even mid-traversal) resumes at the last committed page;
* the seen set holds only the overlap window, so it stays small.

With :class:`TimeSlices` (several tasks share the connector) each search covers one
owned ``_lastUpdated`` window; when a window is complete (the search was made after its
end) the cursor moves to its end and the next owned window is searched in the same
traversal. After an empty window one ``_count=1`` search finds where the data goes on,
so long empty stretches (a first run from 1970) cost one request, not one per window.

The poller assumes the server honours ``_sort=_lastUpdated`` (the JDBC source's
timestamp mode has the same assumption). If it does not, the effect of pruning is
a duplicate (same event id, skipped by sinks), never a loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from common import PermanentError, RetriableError
from connectors.source_lis.fhir_shapes import kind
from connectors.source_lis.fhir_slices import TimeSlices

try:  # orjson parses FHIR pages ~3x faster; the stdlib is the fallback
    from orjson import loads as json_loads
except ImportError:  # pragma: no cover
    from json import loads as json_loads

_instant_cache: dict[str, int] = {}


def parse_instant(text: str) -> int:
    """FHIR instant/dateTime -> epoch milliseconds (UTC when no offset is given)."""
    cached = _instant_cache.get(text)
    if cached is not None:
        return cached
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    ms = int(value.timestamp() * 1000)
    if len(_instant_cache) > 50_000:  # many resources share timestamps; keep the cache bounded
        _instant_cache.clear()
    _instant_cache[text] = ms
    return ms


def format_instant(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class FhirCursor:
    """The source offset of a FHIR poll (JSON-serialisable through :meth:`to_offset`)."""

    high_ms: int = 0
    high_id: str = ""
    # report id -> [versionId, lastUpdated ms], only for reports inside the overlap window
    seen: dict[str, list[Any]] = field(default_factory=dict)

    def to_offset(self) -> dict[str, Any]:
        return {"last_updated": self.high_ms, "id": self.high_id, "seen": dict(self.seen)}

    @classmethod
    def from_offset(cls, offset: dict[str, Any] | None) -> FhirCursor:
        if not offset:
            return cls()
        return cls(int(offset.get("last_updated", 0)), str(offset.get("id", "")),
                   {k: list(v) for k, v in offset.get("seen", {}).items()})


@dataclass
class FhirPage:
    """One search page: new report versions, the resources they reference, and the cursor after it."""

    reports: list[dict[str, Any]]
    included: dict[str, dict[str, Any]]
    offset: dict[str, Any]
    last_page: bool
    # Entries that are not resources at all: (the entry as it came, what is wrong with it).
    malformed: list[tuple[Any, str]] = field(default_factory=list)


def make_http_client(*, base_url: str, timeout_s: float, token: str | None = None, username: str | None = None,
                     password: str | None = None, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """An httpx client with the LIS credentials (bearer token or basic auth)."""
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    auth = httpx.BasicAuth(username, password) if username and password else None
    return httpx.Client(headers=headers, auth=auth, timeout=httpx.Timeout(timeout_s), transport=transport,
                        follow_redirects=False)


class FhirPoller:
    """Pages through changed DiagnosticReports (with their Observations and Patient).

    ``deadline_s`` bounds each request from connect to last byte: the client's timeouts bound
    each connect and each read, and a server trickling bytes would pass those forever."""

    def __init__(self, *, base_url: str, client: httpx.Client, page_size: int, overlap_ms: int,
                 cursor: FhirCursor, start_ms: int = 0, until_ms: int | None = None,
                 deadline_s: float | None = None, slices: TimeSlices | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.deadline_s = deadline_s
        self.page_size = page_size
        self.overlap_ms = overlap_ms
        self.cursor = cursor
        self.start_ms = start_ms
        self.until_ms = until_ms
        self._origin = urlsplit(self.base_url)[:2]
        self._next_url: str | None = None
        # When the current search was made (the server's Bundle.meta.lastUpdated, else our clock).
        # Servers page over the ids a search matched but serve each resource as it is when its page
        # is fetched: a report re-versioned mid-traversal comes back dated after the search, and
        # letting it move the high-water mark would skip reports committed meanwhile (they were
        # not in this search and are older than it). So the mark never passes the search's time.
        self._search_time_ms: int | None = None
        self.slices = slices
        self._window_end: int | None = None  # end of the owned window the current search covers
        self._chained_since: int | None = None  # the next owned window to search in this traversal
        self._seek_from: int | None = None  # after an empty window: find where the data goes on

    @property
    def in_traversal(self) -> bool:
        return self._next_url is not None or self._chained_since is not None or self._seek_from is not None

    def since_ms(self) -> int:
        return max(self.cursor.high_ms - self.overlap_ms, self.start_ms)

    def first_url(self, since_ms: int | None = None) -> str:
        since = self.since_ms() if since_ms is None else since_ms
        upper = self.until_ms
        if self.slices is not None:
            since = self.slices.first_owned_from(since)
            self._window_end = self.slices.window_end(since)
            upper = self._window_end if upper is None else min(upper, self._window_end)
        return self._search_url(since, upper, self.page_size, includes=True)

    def _search_url(self, since: int, upper: int | None, count: int, includes: bool) -> str:
        params: list[tuple[str, str]] = [("_lastUpdated", "ge" + format_instant(since))]
        if upper is not None:
            params.append(("_lastUpdated", "lt" + format_instant(upper)))
        params += [("_sort", "_lastUpdated"), ("_count", str(count))]
        if includes:
            params += [("_include", "DiagnosticReport:result"), ("_include", "DiagnosticReport:subject")]
        return f"{self.base_url}/DiagnosticReport?{urlencode(params)}"

    def rewind(self, cursor: FhirCursor) -> None:
        """Back to a committed cursor (after an aborted batch): the next page re-reads from there."""
        self.cursor = cursor
        self._next_url = self._chained_since = self._seek_from = None

    def next_page(self) -> FhirPage:
        if self._seek_from is not None:
            found = self._first_update_from(self._seek_from)
            self._seek_from = None
            assert self.slices is not None
            following = None if found is None else self.slices.first_owned_from(found)
            if following is None or not self._reached(following):
                return FhirPage([], {}, self.cursor.to_offset(), True)
            self._chained_since = following
        new_search = self._next_url is None
        requested_ms = int(time.time() * 1000)
        url = self._next_url
        if url is None:
            since, self._chained_since = self._chained_since, None
            url = self.first_url(since)
        bundle = self._get(url)
        if bundle is not None and new_search:
            self._search_time_ms = _bundle_time(bundle, requested_ms)
        if bundle is None:
            # The server expired its paging cursor: continue with a new search from the high
            # water itself (not minus the overlap, which could hold more than a page and never
            # progress); ``ge`` re-reads equal timestamps and the seen set drops them.
            self._next_url = None
            bundle = self._get(self.first_url(max(self.cursor.high_ms, self.start_ms)))
            assert bundle is not None
            self._search_time_ms = _bundle_time(bundle, requested_ms)
        return self._accept(bundle)

    def _reached(self, ms: int) -> bool:
        """``ms`` is before the last search's time and inside the replay window, if any."""
        bound = self._search_time_ms
        return (bound is None or ms < bound) and (self.until_ms is None or ms < self.until_ms)

    def _first_update_from(self, since_ms: int) -> int | None:
        """The earliest report ``lastUpdated`` at or after ``since_ms`` (any slice's), or None."""
        bundle = self._get(self._search_url(since_ms, self.until_ms, 1, includes=False))
        for entry in (bundle or {}).get("entry") or ():
            try:
                return parse_instant(entry["resource"]["meta"]["lastUpdated"])
            except (KeyError, TypeError, ValueError):
                return None  # the search proper dead-letters it; here it only ends the skip
        return None

    def _get(self, url: str) -> dict[str, Any] | None:
        started = time.monotonic()
        try:
            with self.client.stream("GET", url) as response:
                status = response.status_code
                if status == 429 or status >= 500:
                    retry_after = response.headers.get("Retry-After")
                    delay = float(retry_after) if retry_after and retry_after.isdigit() else None
                    raise RetriableError(f"FHIR server answered {status}", retry_after=delay)
                if status in (404, 410) and url is self._next_url:
                    return None
                if status in (401, 403):
                    raise PermanentError(f"FHIR server refused the credentials ({status})")
                if status != 200:
                    raise PermanentError(f"FHIR search failed with HTTP {status}")
                content = self._read(response, started)
        except httpx.TimeoutException as exc:
            raise RetriableError(f"FHIR request timed out: {type(exc).__name__} after {self.client.timeout.read:g}s "
                                 "(FHIR_TIMEOUT_S)") from None
        except httpx.ConnectError as exc:
            raise RetriableError(f"FHIR server unreachable: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise RetriableError(f"FHIR request failed: {type(exc).__name__}") from None
        try:
            bundle = json_loads(content)
        except ValueError:
            # A truncated transfer is the usual cause; skipping a page would lose reports.
            raise RetriableError("FHIR search page is not valid JSON") from None
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise RetriableError("FHIR search answered something other than a Bundle")
        return bundle

    def _read(self, response: httpx.Response, started: float) -> bytes:
        """The body, checked against the deadline as it arrives."""
        deadline = self.deadline_s
        chunks: list[bytes] = []
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            if deadline is not None and time.monotonic() - started > deadline:
                raise RetriableError(f"FHIR request timed out: the page was not complete after {deadline:g}s "
                                     "(FHIR_REQUEST_DEADLINE_S)")
        return b"".join(chunks)

    def _accept(self, bundle: dict[str, Any]) -> FhirPage:
        cursor = self.cursor
        seen = cursor.seen
        high_ms, high_id = cursor.high_ms, cursor.high_id
        bound = self._search_time_ms
        slices = self.slices
        reports: list[dict[str, Any]] = []
        included: dict[str, dict[str, Any]] = {}
        malformed: list[tuple[Any, str]] = []
        entries = bundle.get("entry") or ()
        if type(entries) is not list and entries != ():
            raise RetriableError(f"FHIR search page is malformed: Bundle.entry is {kind(entries)}, expected an array")
        for index, entry in enumerate(entries):
            resource = entry.get("resource") if type(entry) is dict else None
            if type(resource) is not dict:
                where = f"Bundle.entry[{index}]" + (".resource" if type(entry) is dict else "")
                malformed.append((entry, f"{where} is {kind(resource if type(entry) is dict else entry)}, "
                                         "expected an object"))
                continue
            rtype = resource.get("resourceType")
            rid = resource.get("id")
            if rtype != "DiagnosticReport":
                included[f"{rtype}/{rid}"] = resource
                continue
            meta = resource.get("meta")
            try:
                raw_version = meta.get("versionId") or "1"
                updated = parse_instant(meta["lastUpdated"])
            except (AttributeError, KeyError, TypeError, ValueError):
                raw_version, updated = None, None
            if updated is None or type(rid) is not str or not rid or type(raw_version) not in (str, int):
                reports.append(resource)  # the mapper dead-letters it; it cannot move the cursor
                continue
            if slices is not None and not slices.owns(updated):
                continue  # another task's window (a version re-dated after this search was made)
            version = str(raw_version)
            previous = seen.get(rid)
            if previous is not None and previous[0] == version:
                continue
            seen[rid] = [version, updated]
            if bound is not None and updated > bound:
                if bound > high_ms:  # see _search_time_ms: the next search re-reads from here
                    high_ms, high_id = bound, ""
            elif (updated, rid) > (high_ms, high_id):
                high_ms, high_id = updated, rid
            reports.append(resource)
        self._next_url = self._next_link(bundle)
        end = self._window_end
        if slices is not None and self._next_url is None and end is not None and bound is not None and end <= bound:
            # The owned window is complete: everything in it up to the search's time was read.
            if end > high_ms:
                high_ms, high_id = end, ""
            following = slices.first_owned_from(end)
            if not entries:
                self._seek_from = end
            elif self._reached(following):
                self._chained_since = following
        cutoff = high_ms - self.overlap_ms
        if any(v[1] < cutoff for v in seen.values()):
            cursor.seen = seen = {k: v for k, v in seen.items() if v[1] >= cutoff}
        cursor.high_ms, cursor.high_id = high_ms, high_id
        return FhirPage(reports, included, cursor.to_offset(), not self.in_traversal, malformed)

    def _next_link(self, bundle: dict[str, Any]) -> str | None:
        links = bundle.get("link") or ()
        if type(links) is not list and links != ():
            raise RetriableError(f"FHIR search page is malformed: Bundle.link is {kind(links)}, expected an array")
        for index, link in enumerate(links):
            if type(link) is not dict or (link.get("url") is not None and type(link["url"]) is not str):
                # Without the next link the rest of the search would be skipped until the next one.
                what = f"link[{index}]" + (".url" if type(link) is dict else "")
                found = link["url"] if type(link) is dict else link
                raise RetriableError(f"FHIR search page is malformed: Bundle.{what} is {kind(found)}, "
                                     f"expected {'a string' if type(link) is dict else 'an object'}")
            if link.get("relation") == "next" and link.get("url"):
                url = urljoin(self.base_url + "/", link["url"])
                if urlsplit(url)[:2] != self._origin:
                    # Never send the LIS credentials to another host.
                    raise PermanentError("FHIR next link points to another server")
                return url
        return None


def _bundle_time(bundle: dict[str, Any], fallback_ms: int) -> int:
    """The instant a search was made: ``Bundle.meta.lastUpdated`` if the server gives it."""
    try:
        return parse_instant(bundle["meta"]["lastUpdated"])
    except (KeyError, TypeError, ValueError):
        return fallback_ms
