"""Where a job's inputs come from: user patterns expanded to files (local or fsspec URLs)
and big files read in byte ranges, so no input has to pass through one process."""
from __future__ import annotations

from collections.abc import Iterator

import fsspec


class InputError(Exception):
    """The job cannot run (no input files, unreadable plan); the CLI prints one line."""


# botocore error codes a user fixes by changing credentials, bucket or policy
_DENIED = {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "ExpiredToken", "InvalidToken", "AccountProblem", "Forbidden", "403"}
_NO_BUCKET = {"NoSuchBucket", "InvalidBucketName"}


def storage_problem(e: BaseException) -> str | None:
    """One line for a storage error the user must fix (no credentials, no bucket, no
    permission, an endpoint that does not answer), or None for any other error. Looks
    through the chain of causes, since s3fs and fsspec wrap botocore's errors."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        name = type(cur).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            return ("no credentials for s3: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                    "AWS_PROFILE, or run on a machine with an instance role")
        if name in ("EndpointConnectionError", "ConnectTimeoutError"):
            return f"cannot reach the storage endpoint: {cur}"
        response = getattr(cur, "response", None)  # botocore's reply; None where none came
        code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
        if code in _NO_BUCKET or "specified bucket does not exist" in str(cur):
            return f"the bucket does not exist: {_first_line(cur)}"
        if code in _DENIED:
            return f"storage refused this job's credentials or permissions ({code}): {_first_line(cur)}"
        if isinstance(cur, PermissionError):
            return f"permission denied: {_first_line(cur)}"
        cur = cur.__cause__ or cur.__context__
    return None


def storage_problem_at(fs, path: str) -> str | None:
    """Why a path reads as missing, if storage is the reason: `isfile`/`exists` answer
    False for credential, bucket and permission errors too, which would send the user
    looking for a typo."""
    try:
        fs.info(path)
    except Exception as e:  # noqa: BLE001 - only storage problems are reported; the rest is "not a file"
        return storage_problem(e)
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def require(ok: bool, message: str) -> None:
    """Check one user-given setting: configs validate in `__post_init__`, so a bad value
    fails where it is made (the CLI prints the message as one line)."""
    if not ok:
        raise ValueError(message)


def _has_magic(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def expand_paths(patterns: list[str]) -> list[str]:
    """Turn user patterns (paths, globs, fsspec URLs) into the files to read, so a typo
    fails the job at once instead of silently planning from nothing."""
    found: set[str] = set()
    for pattern in patterns:
        fs, _, paths = fsspec.core.get_fs_token_paths(pattern, mode="rb")
        local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        matched = [p for p in paths if fs.isfile(p)]
        if not matched:
            problem = None if local else storage_problem_at(fs, paths[0] if paths else pattern)
            what = problem or ("matches no file" if _has_magic(pattern) else "is not a file")
            raise InputError(f"input {pattern!r} {what}" if problem is None else f"input {pattern!r}: {problem}")
        for p in matched:
            found.add(p if local else fs.unstrip_protocol(p))
    return sorted(found)


def iter_line_ranges(path: str, chunk_bytes: int) -> list[tuple[str, int, int]]:
    """Split a file into byte ranges that workers read independently, so a 20 GB jsonl
    never has to pass through one process."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    fs, fpath = fsspec.core.url_to_fs(path)
    size = int(fs.size(fpath))
    return [(path, s, min(s + chunk_bytes, size)) for s in range(0, size, chunk_bytes)]


def read_lines_in_range(path: str, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """Yield (byte offset, line without its newline) for every line that starts in
    [start, end): Hadoop split semantics, so adjacent ranges read each line exactly once.

    A range that does not start at 0 skips the partial line it starts inside; the last
    line may run past `end` and is read to its end."""
    pos, data = read_range(path, start, end)
    yield from _split_lines(data, pos)


def read_range(path: str, start: int, end: int) -> tuple[int, bytes]:
    """(file offset, bytes) of the whole lines that start in [start, end), the lines of
    `read_lines_in_range` in one buffer, for parsers that split lines themselves."""
    if end <= start:
        return start, b""
    with fsspec.open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            pos = start - 1 + len(f.readline())  # rest of the line holding byte start-1
        else:
            pos = 0
        if pos >= end:
            return pos, b""
        f.seek(pos)
        data = f.read(end - pos)
        if data and not data.endswith(b"\n"):
            data += f.readline()  # the last owned line runs past `end`
    return pos, data


def _split_lines(data: bytes, base: int) -> Iterator[tuple[int, bytes]]:
    lo, n = 0, len(data)
    while lo < n:
        hi = data.find(b"\n", lo)
        if hi < 0:
            hi = n
        line = data[lo:hi]
        if line.endswith(b"\r"):
            line = line[:-1]
        yield base + lo, line
        lo = hi + 1
