"""One image's registry for one run: its token, and watched GETs through the run's client."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator

import requests
import urllib3.exceptions

from image_creator.errors import Interrupted, SourceError
from image_creator.fetch import watch as watching
from image_creator.fetch.client import HttpClient
from image_creator.fetch.oci.documents import describe_error, parse_ident, shown
from image_creator.fetch.watch import Cut, Watch
from image_creator.units import CHUNK

MAX_TOKEN_BYTES = 64 * 1024
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
# what a broken or cut connection raises, from requests or from urllib3 directly
NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


class Registry:
    """One image's registry for one run: the token, and GETs that check the status, each
    through the run's client (its User-Agent, its retry policy) and watched (cut when
    ``cancelled`` is set, when it stalls, or past its deadline)."""

    def __init__(
        self, ident: str, client: HttpClient, cancelled: threading.Event | None = None
    ) -> None:
        self.ident = ident
        self.image = parse_ident(ident)
        self.client = client
        self.cancelled = cancelled
        self.headers: dict[str, str] = {}
        token = self._token()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _token(self) -> str | None:
        """A pull token, as docker-export gets one: ``/v2/`` answers 401 naming the token
        realm and service (else ``/token`` of the registry is asked), the realm answers a
        JSON object with the token. Read here so that both requests are bounded."""
        registry = self.image.registry
        realm, service = f"https://{registry}/token", ""
        try:
            with self.watched(deadline=watching.TEXT_DEADLINE) as watch:
                url = f"https://{registry}/v2/"
                with self.reporting_cuts(watch, "the token", url):
                    response = self.send(url, watch, retries=self.client.policy.quick_retries)
                    with response:
                        response.raw.read(MAX_TOKEN_BYTES, decode_content=False)
                if response.status_code == requests.codes.unauthorized:
                    challenge = dict(
                        _CHALLENGE_PARAM.findall(response.headers.get("WWW-Authenticate", ""))
                    )
                    realm = challenge.get("realm", realm)
                    service = challenge.get("service", service)
                raw = self._read(
                    watch,
                    realm,
                    what="the token",
                    limit=MAX_TOKEN_BYTES,
                    params={"service": service, "scope": f"repository:{self.image.fullname}:pull"},
                    authorized=False,
                    check_status=False,
                )
            answer = json.loads(raw)
        except (requests.RequestException, ValueError) as exc:
            raise SourceError(
                f"{self.ident}: no token from the registry: {describe_error(exc)}"
            ) from exc
        if not isinstance(answer, dict):
            raise SourceError(f"{self.ident}: no token from the registry: got {shown(answer)}")
        token: object = answer.get("token") or answer.get("access_token")
        if token is not None and not isinstance(token, str):
            raise SourceError(f"{self.ident}: no token from the registry: got {shown(token)}")
        return token or None

    def url(self, kind: str, reference: str) -> str:
        return f"https://{self.image.registry}/v2/{self.image.fullname}/{kind}/{reference}"

    @contextlib.contextmanager
    def watched(self, *, deadline: float | None = None) -> Iterator[Watch]:
        with Watch(cancelled=self.cancelled, deadline=deadline) as watch:
            yield watch

    def send(
        self,
        url: str,
        watch: Watch,
        *,
        retries: int,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        return self.client.send(
            "GET", url, watch=watch, retries=retries, headers=headers, params=params
        )

    def cut_error(self, watch: Watch, what: str, url: str) -> Exception | None:
        """Why ``watch`` cut a request, as the error to raise; None if it did not."""
        reason = watch.reason if watch.was_cut is None else watch.was_cut
        if reason is None:
            return None
        if reason in (Cut.CANCELLED, Cut.CLOSED):
            return Interrupted("cancelled")
        if reason is Cut.TIMED_OUT:
            text = watching.deadline_text(watch.deadline or 0.0)
        else:
            text = watching.stall_text()
        return SourceError(f"{self.ident}: {what}: {text} ({url})")

    @contextlib.contextmanager
    def reporting_cuts(self, watch: Watch, what: str, url: str) -> Iterator[None]:
        """A network error on a request the watch cut is reported as the cut."""
        try:
            yield
        except NETWORK_ERRORS as exc:
            error = self.cut_error(watch, what, url)
            if error is not None:
                raise error from exc
            raise

    def get(
        self, url: str, *, accept: str | None = None, what: str, watch: Watch
    ) -> requests.Response:
        headers = dict(self.headers)
        if accept is not None:
            headers["Accept"] = accept
        with self.reporting_cuts(watch, what, url):
            response = self.send(url, watch, retries=self.client.policy.retries, headers=headers)
        if response.status_code != requests.codes.ok:
            response.close()
            raise SourceError(
                f"{self.ident}: HTTP {response.status_code} {response.reason} for {what} ({url})"
            )
        return response

    def read(self, url: str, *, accept: str | None = None, what: str, limit: int) -> bytes:
        """A whole document, refused past ``limit`` bytes or TEXT_DEADLINE seconds."""
        with self.watched(deadline=watching.TEXT_DEADLINE) as watch:
            return self._read(watch, url, accept=accept, what=what, limit=limit)

    def _read(
        self,
        watch: Watch,
        url: str,
        *,
        accept: str | None = None,
        what: str,
        limit: int,
        params: dict[str, str] | None = None,
        authorized: bool = True,
        check_status: bool = True,
    ) -> bytes:
        body = bytearray()
        headers = dict(self.headers) if authorized else {}
        if accept is not None:
            headers["Accept"] = accept
        with self.reporting_cuts(watch, what, url):
            response = self.send(
                url,
                watch,
                retries=self.client.policy.quick_retries,
                headers=headers,
                params=params,
            )
            with response:
                if check_status and response.status_code != requests.codes.ok:
                    raise SourceError(
                        f"{self.ident}: HTTP {response.status_code} {response.reason} "
                        f"for {what} ({url})"
                    )
                while chunk := response.raw.read1(CHUNK, decode_content=True):
                    watch.received(len(chunk))
                    body += chunk
                    if len(body) > limit:
                        raise SourceError(f"{self.ident}: {what} is larger than {limit} bytes")
        error = self.cut_error(watch, what, url) if watch.was_cut is not None else None
        if error is not None:  # cut: what came is not the whole document
            raise error
        return bytes(body)
