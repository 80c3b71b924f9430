"""OCI images: inspect in the registry (digest, sizes) and export for linux/arm64/v8.

A registry is not trusted: every document and blob it serves is checked against the digest
that names it before it is used, and every digest must be ``sha256:<64 hex digits>`` before
anything is named after it or any request is made with it. The platform manifest must hash
to the digest the index names, the image config to ``config.digest`` and each layer blob, as
downloaded, to its layer digest; documents of the wrong shape are refused, naming the image.

docker-export (which verifies nothing and names files after the manifest's digests) only
lays out the docker-load tar: the documents and blobs are fetched and verified here, and
the tar is verified once written (its config against ``config.digest``, its layers against
the config's diff_ids).

Every request goes through the run's client (fetch/client.py: its User-Agent, its retry
policy) and is watched (fetch/watch.py): documents and the token get TEXT_DEADLINE in all,
a layer download is cut when it stalls or when the run is cancelled, and a layer never
inflates past what its gzip trailer says (plus LAYER_SLACK) into the build folder.

The modules, in the order of a pull: ``documents`` (names, digests, document shapes),
``registry`` (the token, watched GETs), ``inspect`` (what the check learns), ``export`` (the
tar, written from verified blobs), ``tar`` (a docker-load tar verified and its tag checked).
"""

from image_creator.fetch.oci.documents import RemoteImage, export_filename, parse_ident, platform
from image_creator.fetch.oci.export import export_image
from image_creator.fetch.oci.inspect import inspect_image
from image_creator.fetch.oci.tar import ExportedImage, check_tag, same_reference, verify_export

__all__ = [
    "ExportedImage",
    "RemoteImage",
    "check_tag",
    "export_filename",
    "export_image",
    "inspect_image",
    "parse_ident",
    "platform",
    "same_reference",
    "verify_export",
]
