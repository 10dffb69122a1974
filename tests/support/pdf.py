"""Small real PDFs for tests, written with pypdf: one text line per page."""

from __future__ import annotations

import base64
import io
from typing import Any

from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject


def _helvetica(writer: PdfWriter) -> Any:
    return writer._add_object(  # pypdf has no public way to add a bare object
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
    )


def pdf_bytes(*pages: str) -> bytes:
    """A PDF whose pages show the given lines in Helvetica (an empty string: a blank page)."""
    writer = PdfWriter()
    font = _helvetica(writer)
    for line in pages:
        page = writer.add_blank_page(612, 792)
        if not line:
            continue
        fonts = DictionaryObject({NameObject("/F1"): font})
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): fonts})
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 72 720 Td ({line}) Tj ET".encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def pdf_base64(*pages: str) -> str:
    return base64.b64encode(pdf_bytes(*pages)).decode()


def shared_stream_pdf(pages: int, lines: int) -> bytes:
    """A small PDF whose ``pages`` pages all show one content stream of ``lines`` lines:
    tiny on the wire, costly to read (every page extracts the whole stream again)."""
    writer = PdfWriter()
    font = _helvetica(writer)
    stream = DecodedStreamObject()
    text = " ".join(
        f"BT /F1 8 Tf 10 {i % 780} Td (line {i} of the shared stream) Tj ET" for i in range(lines)
    )
    stream.set_data(text.encode("latin-1"))
    shared = writer._add_object(stream)
    for _ in range(pages):
        page = writer.add_blank_page(612, 792)
        fonts = DictionaryObject({NameObject("/F1"): font})
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): fonts})
        page[NameObject("/Contents")] = shared
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
