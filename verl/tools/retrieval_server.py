"""A local retrieval service for ``SearchTool``: BM25 (``bm25s``) over a jsonl corpus, verl's HTTP shapes.

    python -m verl.tools.retrieval_server --corpus corpus.jsonl --port 8001

The corpus holds one JSON object per line with ``id`` and ``contents`` (``"title\\ntext"``, as Search-R1's corpora).
``POST /retrieve`` takes ``{"queries": [...], "topk": k, "return_scores": bool}`` and answers
``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}`` (without ``score`` when
``return_scores`` is false); ``GET /health`` answers ``{"status": "ok", "documents": N}``.

In tests and examples :class:`RetrievalServer` runs the same app on a free loopback port in a background thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["BM25Index", "RetrievalServer", "create_app", "load_corpus", "main"]


def load_corpus(path: str | Path) -> list[dict[str, Any]]:
    """The documents of a jsonl corpus; a line that is not an object with ``contents`` is an error naming it."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not JSON ({err.msg})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("contents"), str):
                raise ValueError(f"{path}, line {number}: expected an object with a string 'contents'")
            doc.setdefault("id", str(len(docs)))
            docs.append(doc)
    if not docs:
        raise ValueError(f"{path}: the corpus is empty")
    return docs


def _import_bm25s() -> Any:
    """``bm25s`` on its numpy backend. Left alone, ``import bm25s`` imports numba (and llvmlite) when installed, and
    an llvmlite object in ``sys.modules`` breaks vLLM's CPU kernel scan (``vllm/triton_utils/dispatcher.py`` calls
    ``vars(value).get`` on every module attribute): a process that imported bm25s could no longer start a vLLM
    engine. Hiding numba during the import makes bm25s pick numpy, which is ample for a local corpus."""
    import sys

    if "bm25s" in sys.modules or "numba" in sys.modules:
        import bm25s

        return bm25s
    sys.modules["numba"] = None  # type: ignore[assignment]  (an import of numba now raises ImportError)
    try:
        import bm25s
    finally:
        del sys.modules["numba"]
    return bm25s


class BM25Index:
    """BM25 over the documents' ``contents`` (lower-cased, English stop words kept: queries are short)."""

    def __init__(self, docs: list[dict[str, Any]]):
        bm25s = _import_bm25s()

        self.docs = docs
        self._bm25s = bm25s
        self._retriever = bm25s.BM25()
        tokens = bm25s.tokenize([d["contents"] for d in docs], stopwords=None, show_progress=False)
        if not tokens.vocab:
            raise ValueError("the corpus has no indexable words (BM25 keeps words of two or more letters)")
        self._retriever.index(tokens, show_progress=False)

    def search(self, queries: list[str], topk: int) -> list[list[tuple[dict[str, Any], float]]]:
        k = max(1, min(int(topk), len(self.docs)))
        out = []
        for query in queries:  # one at a time: an empty query tokenises to nothing and finds nothing
            tokens = self._bm25s.tokenize([query], stopwords=None, show_progress=False)
            if not tokens.ids or not tokens.ids[0]:
                out.append([])
                continue
            ids, scores = self._retriever.retrieve(tokens, k=k, show_progress=False)
            out.append([(self.docs[int(i)], float(s)) for i, s in zip(ids[0], scores[0]) if float(s) > 0])
        return out


def create_app(index: BM25Index):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="verl retrieval server")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "documents": len(index.docs)}

    @app.post("/retrieve")
    async def retrieve(request: dict) -> Any:
        queries = request.get("queries")
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            return JSONResponse({"error": "'queries' must be a list of strings"}, status_code=400)
        topk = request.get("topk", 3)
        if not isinstance(topk, int) or topk < 1:
            return JSONResponse({"error": "'topk' must be a positive integer"}, status_code=400)
        with_scores = bool(request.get("return_scores", True))
        result = []
        for hits in index.search(queries, topk):
            rows = []
            for doc, score in hits:
                row: dict[str, Any] = {"document": {"id": doc["id"], "contents": doc["contents"]}}
                if with_scores:
                    row["score"] = score
                rows.append(row)
            result.append(rows)
        return {"result": result}

    return app


class RetrievalServer:
    """The retrieval app on ``host:port`` (0: a free port) in a background thread; ``.url`` ends in ``/retrieve``."""

    def __init__(self, corpus: str | Path | list[dict[str, Any]], host: str = "127.0.0.1", port: int = 0):
        docs = corpus if isinstance(corpus, list) else load_corpus(corpus)
        self.index = BM25Index(docs)
        self.host, self.port = host, port
        self.url: str | None = None
        self._server: Any = None

    def start(self, timeout: float = 30.0) -> RetrievalServer:
        from verl.utils.http_server import BackgroundServer

        self._server = BackgroundServer(create_app(self.index), self.host, self.port, name="retrieval server")
        self.port = self._server.start(timeout)
        self.url = f"http://{self.host}:{self.port}/retrieve"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> RetrievalServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m verl.tools.retrieval_server",
        description="Serve BM25 retrieval over a jsonl corpus ({'id', 'contents'} per line) for verl's SearchTool.",
    )
    parser.add_argument("--corpus", required=True, help="jsonl file, one {'id', 'contents': 'title\\ntext'} per line")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    import uvicorn

    index = BM25Index(load_corpus(args.corpus))
    print(f"retrieval server: {len(index.docs)} documents; POST http://{args.host}:{args.port}/retrieve", flush=True)
    uvicorn.run(create_app(index), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
