"""Typed request and response bodies of the REST API (they generate the OpenAPI document at /openapi.json)."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class AnalyzeUrlRequest(BaseModel):
    """JSON body of ``POST /api/v1/analyze`` for an image on the web."""

    url: str = Field(..., max_length=4096, description="http:// or https:// URL of a JPEG, PNG, WebP, BMP, TIFF or GIF image",
                     examples=["https://example.org/photo.jpg"])


class FaceOut(BaseModel):
    index: int = Field(..., description="position of the face in `faces` (0-based), also used in its thumbnail URL")
    box: tuple[int, int, int, int] = Field(..., description="(x, y, w, h) in pixels of the analysed image, "
                                                            "origin top-left, EXIF orientation applied")
    emotion: str = Field(..., description="the most probable emotion", examples=["happy"])
    score: float = Field(..., ge=0, le=1, description="probability of `emotion`")
    probabilities: dict[str, float] = Field(..., description="probability of every emotion the model knows; sums to 1")
    detection_score: float | None = Field(None, description="the face detector's confidence 0..1 (null when "
                                                            "the analyzer gives none)")
    thumbnail_url: str | None = Field(None, description="square PNG crop of the face; null when not stored or expired")


class AnalysisOut(BaseModel):
    id: str = Field(..., description="unique id of this analysis (32 hex characters)")
    width: int = Field(..., description="image width in pixels (after EXIF orientation)")
    height: int = Field(..., description="image height in pixels (after EXIF orientation)")
    faces: list[FaceOut] = Field(..., description="one entry per face found; empty when there is none")
    model: str = Field(..., description="name of the emotion model that produced the result")
    elapsed_ms: float = Field(..., description="server time for decoding and analysing the image, milliseconds "
                                               "(upload/download time not included)")
    created_at: datetime = Field(..., description="when the analysis was made (UTC)")
    source: Literal["upload", "url"] = Field(..., description="how the image arrived")
    source_name: str | None = Field(None, description="uploaded file name or fetched URL")
    stored: bool = Field(..., description="false for `persist=false` analyses (camera frames): nothing was saved")
    annotated_url: str | None = Field(None, description="PNG with boxes and labels; null when not stored or expired")
    original_url: str | None = Field(None, description="the original image (only with --keep-uploads)")
    expires_at: datetime | None = Field(None, description="when the stored images are deleted (UTC)")
    images_expired: bool = Field(False, description="true once the images were deleted by the retention period")


class ResultSummary(BaseModel):
    id: str
    created_at: datetime
    width: int
    height: int
    face_count: int
    emotions: list[str] = Field(..., description="top emotion of each face, in face order")
    source: Literal["upload", "url"]
    source_name: str | None
    model: str
    url: str = Field(..., description="URL of the full result")
    annotated_url: str | None
    thumbnail_url: str | None = Field(None, description="thumbnail of the first face, when there is one")


class ResultsPage(BaseModel):
    items: list[ResultSummary] = Field(..., description="newest first")
    total: int = Field(..., description="number of stored results")
    limit: int
    next_cursor: str | None = Field(None, description="pass as `cursor` to get the next (older) page; null at the end")


class HealthOut(BaseModel):
    status: Literal["ok", "loading", "error"]
    version: str
    model: str | None = Field(None, description="the loaded emotion model")
    analyzer_ready: bool
    results: int = Field(..., description="number of stored results")
    uptime_s: float
    pid: int = Field(..., description="process id of the worker that answered")
    limits: dict[str, float] = Field(..., description="max_upload_bytes, max_pixels, retention_hours, url_timeout_s")


class ErrorOut(BaseModel):
    error: str = Field(..., description="short machine-readable code, e.g. `image_too_large`")
    message: str = Field(..., description="what was wrong and what to do")
    status: int = Field(..., description="the HTTP status code")
