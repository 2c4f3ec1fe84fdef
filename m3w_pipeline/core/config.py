"""Typed configuration for a corpus build.

Every threshold the pipeline applies is a named field here, with a default that
works on real Common Crawl data. Each step reads only its own section, so a
section can be pickled to Beam workers on its own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from m3w_pipeline.core.typed_config import from_dict


@dataclass(frozen=True)
class WarcConfig:
    # Pages larger than this (decoded HTTP payload) are dropped as too-large.
    max_page_bytes: int = 5_000_000
    # Media records larger than this are dropped as too-large.
    max_media_bytes: int = 25_000_000


@dataclass(frozen=True)
class ExtractConfig:
    # Text blocks shorter than this many characters are not kept as nodes.
    min_text_node_chars: int = 1
    # Keep <figcaption> text as a text node right after its image.
    keep_figcaptions: bool = True
    # Reader comments are not main content; trafilatura's include_comments.
    include_comments: bool = False
    # Keep table rows as text nodes (trafilatura's include_tables).
    include_tables: bool = True
    # Skip trafilatura's readability/justext comparison. On the 60 judged corpus pages the
    # comparison costs a third of the time and gives no better text (aeb token F1 equal,
    # snippet F1 lower) and no more content images once extract/content_images.py chooses them.
    fast: bool = True
    # Split a paragraph around an inline image so the image keeps its DOM position.
    split_text_at_inline_images: bool = True
    # Images whose width or height attribute is below this are spacers / tracking pixels.
    min_declared_image_side: int = 2
    # From a srcset, take the widest candidate up to this many px (0: no cap, widest).
    max_srcset_width: int = 0
    # Keep only the first image node per absolute URL.
    dedup_images: bool = True
    # Drop related-article cards: an image linked to a page that a nearby text link (within
    # teaser_max_depth ancestors, link text >= teaser_link_density of the text) also targets.
    drop_teaser_images: bool = True
    teaser_max_depth: int = 4
    teaser_link_density: float = 0.5
    # ... or the card is one of at least this many look-alike siblings (same tag and class).
    teaser_min_siblings: int = 3
    # Choose content images ourselves (extract/content_images.py) instead of keeping exactly the
    # images trafilatura kept: every image of the text region, a lead image just before it and
    # the page's photo galleries, minus what the reader does not see as content.
    select_content_images: bool = True
    # The text region is the deepest element holding this share of trafilatura's located text.
    content_region_share: float = 0.9
    # An image declared (width/height attributes or a WxH in its URL) smaller than this on a
    # side is an icon, avatar or badge, not content.
    min_content_image_side: int = 100
    # A lead image sits before the region with at most this much text (title, byline, date)
    # in between, below an ancestor at most lead_max_levels above the region; one that is the
    # page's og:image may be twice as far and at any level.
    lead_max_text_chars: int = 400
    lead_max_levels: int = 3
    # This many images, each linking to its own full-size file (a lightbox), in one container
    # outside the region are the page's photo gallery.
    gallery_min_images: int = 3
    # An image linking to another site is an ad, a partner logo or a promo unless declared at
    # least this large on both sides.
    external_link_min_side: int = 300
    # Add a video node for the page's og:video meta unless a <video> already has that URL.
    include_og_video: bool = True
    # When trafilatura keeps no image and its text lies mostly outside the page's own declared
    # main region (<main>, role="main"), it picked the wrong region (portal and tile pages):
    # walk the declared region instead. Overlap is the share of trafilatura's words found there.
    declared_main_fallback: bool = True
    declared_main_max_overlap: float = 0.8
    # Time budget per page: extraction runs in a child process that is killed (and restarted)
    # when a page takes longer; the page is counted as extract-timeout. 0 runs in-process, unbounded.
    timeout_s: float = 10.0


@dataclass(frozen=True)
class ImageConfig:
    # Pillow's decompression-bomb guard: images with more pixels are rejected.
    max_image_pixels: int = 89_478_485
    # The one image size and aspect setting of a build: checked once per image, from its header
    # before anything is decoded, for every corpus (image_refs outcomes too-small, bad-aspect).
    # min(w, h) below this is rejected as too-small.
    min_side: int = 64
    # max(w, h) / min(w, h) above this is rejected as bad-aspect.
    max_aspect_ratio: float = 3.0
    # Longest side after resizing; smaller images are not upscaled.
    max_side: int = 512
    output_format: str = "jpg"
    jpeg_quality: int = 90
    # Convert images with an embedded non-sRGB ICC profile (Display P3, Adobe RGB,
    # CMYK press profiles) to sRGB; costs a few ms per such image.
    convert_icc_to_srgb: bool = True


@dataclass(frozen=True)
class FilterConfig:
    min_words_per_document: int = 20
    min_images_per_document: int = 1
    max_images_per_document: int = 30

    # --- document-level quality (m3w_pipeline.filter.quality; each failing check names the drop).
    # Defaults follow Gopher (Rae et al. 2021) / OBELICS, loosened where a document is a
    # whole extracted page rather than a clean paragraph. A ratio of 1.0 (max) or 0.0 (min)
    # disables its check.
    max_words_per_document: int = 100_000
    # Repetition scores (the next 11 checks) are noise on short texts: documents with fewer
    # words than this pass them (Gopher applies them to documents of 50+ words).
    min_words_for_repetition_filters: int = 50
    # Fraction of lines / paragraphs (text nodes) that occur more than once, by count and by chars.
    max_dup_line_fraction: float = 0.30
    max_dup_para_fraction: float = 0.30
    max_dup_line_char_fraction: float = 0.20
    max_dup_para_char_fraction: float = 0.20
    # Gopher: chars in the most frequent word n-gram / all word chars, for n = 2, 3, 4.
    max_top_2gram_char_fraction: float = 0.20
    max_top_3gram_char_fraction: float = 0.18
    max_top_4gram_char_fraction: float = 0.16
    # Gopher: chars covered by word n-grams that occur more than once, for n = 5 and 10.
    max_dup_5gram_char_fraction: float = 0.15
    max_dup_10gram_char_fraction: float = 0.10
    # BigScience/OBELICS character repetition: share of the top sqrt(#distinct) repeated
    # character n-grams (n = char_repetition_n) among all character n-grams.
    char_repetition_n: int = 10
    max_char_repetition_ratio: float = 0.25
    # Word repetition: share of word n-grams (n = word_repetition_n) that occur more than once.
    word_repetition_n: int = 5
    max_word_repetition_ratio: float = 0.30
    # Share of words that are stopwords of the identified language (languages with a list only).
    min_stopword_ratio: float = 0.10
    # Share of words on the flagged-word list (adult content) of the language, plus the shared list.
    max_flagged_word_ratio: float = 0.01
    # Unicode punctuation (P*) among non-space chars; pages with none are menus or lists.
    min_punctuation_ratio: float = 0.001
    # Non-letter, non-space chars (digits, punctuation, symbols, emoji) among non-space chars.
    max_special_char_ratio: float = 0.35
    # Language identification (py3langid, model shipped in its wheel). Empty: any language.
    languages: tuple[str, ...] = ()
    min_language_score: float = 0.0
    # Text fed to the language identifier, from the start of the document (cost is linear).
    lang_id_max_chars: int = 10_000

    # --- node level: text nodes failing these leave the document (OBELICS paragraph filters).
    min_words_per_text_node: int = 1
    max_words_per_text_node: int = 10_000
    max_text_node_char_repetition_ratio: float = 1.0
    max_text_node_special_char_ratio: float = 0.60
    max_text_node_flagged_word_ratio: float = 0.10

    # --- node level: images failing these leave the document (sizes are the original ones).
    # Minimum side and aspect ratio are ImageConfig.min_side / max_aspect_ratio, applied before
    # decoding; the former keys filters.min_image_side / filters.max_image_aspect_ratio (same
    # defaults, never stricter) are unknown keys now, an error that names them.
    max_image_side: int = 20_000
    # Pillow format names of the source image; empty allows all that decoded.
    allowed_image_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF", "MPO")
    # Image URLs whose host+path matches m3w_pipeline/data/image_url_blocklist.txt are removed.
    use_image_url_blocklist: bool = True


@dataclass(frozen=True)
class DedupConfig:
    """Corpus-scale dedup (m3w_pipeline.filter.dedup, beam_jobs.dedup_stages).

    Near-duplicate text: word `shingle_size`-grams -> MinHash with `num_perm` seeded
    universal hashes -> LSH with `bands` x `rows` (bands * rows <= num_perm). Two documents
    become candidates with probability 1 - (1 - s^rows)^bands for Jaccard s (S-curve midpoint
    (1/bands)^(1/rows) = 0.71 for 16 x 8); candidates are kept as duplicates only when the
    signature estimate of their Jaccard is >= `min_jaccard`, so the effective threshold is 0.8.
    """

    enabled: bool = True
    shingle_size: int = 5
    num_perm: int = 128
    bands: int = 16
    rows: int = 8
    seed: int = 1
    min_jaccard: float = 0.8
    # Rounds of min-label propagation over candidate edges (connected components in Beam).
    # Components wider than this many hops keep more than one document (never none).
    cc_rounds: int = 8
    # Perceptual-hash (64-bit phash) Hamming distance at or below which two images of one
    # document are the same picture; the later one is dropped.
    max_phash_distance: int = 4
    # An image URL or sha256 found in more than this many documents is boilerplate (logo,
    # banner, share button) and is removed from every document.
    max_docs_per_image: int = 10
    # Rejected documents/images kept as a sample per stage and reason (smallest keys first).
    reject_sample_size: int = 20


@dataclass(frozen=True)
class ShardConfig:
    # Documents per tar shard.
    samples_per_shard: int = 1000
    # Prefix of shard file names: PREFIX-00000.tar, PREFIX-00000.parquet.
    prefix: str = "m3w"


@dataclass(frozen=True)
class FetchConfig:
    """How media referenced by pages is fetched (see m3w_pipeline/media/fetch/).

    Defaults are for crawling the open web politely from many workers: each
    worker process holds `workers` connections, at most `per_host_concurrency`
    to one host, and starts requests to one host at least `per_host_delay_s` apart.
    """

    # Fetch the images (and video sources) a page references but the crawl does not hold (real Common Crawl WARCs
    # hold almost none). Off by default so a build never touches the network unless asked
    # (`m3w build --fetch-media`).
    enabled: bool = False
    # Threads per Fetcher (one Fetcher per Beam DoFn instance, i.e. per worker thread).
    workers: int = 16
    per_host_concurrency: int = 4
    # Minimum gap between the starts of two requests to the same host.
    per_host_delay_s: float = 0.1
    connect_timeout_s: float = 10.0
    # Longest wait for any single read from the socket (headers or a body chunk).
    read_timeout_s: float = 30.0
    # Whole request (connect to last body byte) per attempt: stops servers that trickle bytes.
    total_timeout_s: float = 120.0
    # Bodies larger than this are too-large (Content-Length checked first, then while streaming).
    max_bytes: int = 20_000_000
    # Extra attempts after the first on 408/429/5xx, timeouts, resets and cut-short bodies.
    max_retries: int = 3
    # Backoff before retry k (1-based): min(backoff_max_s, backoff_base_s * 2**(k-1)), with jitter.
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    # A Retry-After longer than this is not waited for: the URL ends with its HTTP status.
    retry_after_cap_s: float = 60.0
    max_redirects: int = 5
    user_agent: str = "m3w-bot/0.1 (+https://github.com/m3w/m3w)"
    # "http://host:port" forward proxy (https goes through CONNECT); "" for direct connections.
    proxy: str = ""
    # Like curl --resolve: host name -> "ip" (the URL's port) or "ip:port" ("[v6]:port").
    # Checked like resolved addresses (a private one needs allow_private_addresses); the Host header keeps the name.
    host_overrides: dict[str, str] = field(default_factory=dict)
    # Off by default: private, loopback, link-local, multicast, reserved addresses are refused.
    allow_private_addresses: bool = False
    # X-Robots-Tag noai / noimageai and TDMRep tdm-reservation: 1 make a URL opt-out.
    honour_opt_out: bool = True
    # Fetch each origin's robots.txt (RFC 9309) and skip paths it disallows for our user-agent
    # token (status robots); kept this long per origin (the RFC's 24 hours).
    honour_robots_txt: bool = True
    robots_cache_s: float = 86_400.0
    # Also honour noai/noimageai scoped to another crawler ("X-Robots-Tag: CCBot: noai"):
    # they state a wish about AI use of the content, and CCBot is where our pages come from.
    opt_out_any_agent: bool = True
    # Extra CA bundle (PEM) added to the system trust store, e.g. for a TLS-intercepting proxy.
    ca_file: str = ""
    # Resolved addresses are reused this long (getaddrinfo gives no TTL).
    dns_cache_s: float = 300.0
    # A name lookup that has not answered by then fails as dns (retryable): getaddrinfo has no
    # timeout of its own, and a hung resolver must not hold a fetch thread for the OS's minute.
    dns_timeout_s: float = 10.0
    # Idle keep-alive connections are kept this long per (host, address).
    idle_connection_s: float = 30.0


@dataclass(frozen=True)
class PairConfig:
    """Image-text pairs (m3w_pipeline/pairs.py): ALIGN-style alt text, LTIP-style long descriptions.

    The caption checks here are shared with video captions (VideoConfig keeps only its lengths).
    """

    align: bool = True  # image + its alt text
    ltip: bool = True  # image + a long description: its figcaption, else a describing adjacent sentence
    # Word limits per kind (ALIGN, Jia et al. 2021, keeps alt texts of 3..20 unigrams).
    align_min_words: int = 3
    align_max_words: int = 20
    ltip_min_words: int = 5
    ltip_max_words: int = 256
    max_caption_chars: int = 2000
    # LTIP sources, in order of preference: "figcaption" and/or "context" (adjacent text).
    ltip_sources: tuple[str, ...] = ("figcaption", "context")
    # Context: the text node right after the image, then right before it ("after", "before"),
    # not counting the image's own figcaption. With context_requires_cue, only sentences that
    # point at the image count: a sentence needs two of {a media noun (context_cues), a pointer
    # (context_pointers), a direction (forward/backward cues)}, or a strong cue ("pictured"):
    # "The picture above shows ...", "Below you can see ...", not "We restored the photograph".
    # "context_scope" keeps just those sentences ("sentence") or the whole text node ("paragraph").
    context_order: tuple[str, ...] = ("after", "before")
    context_requires_cue: bool = True
    context_scope: str = "sentence"
    context_cues: tuple[str, ...] = (
        "image", "images", "picture", "pictures", "photo", "photos", "photograph", "photographs",
        "illustration", "drawing", "figure", "diagram", "chart", "map", "screenshot",
    )
    context_pointers: tuple[str, ...] = ("this", "these", "here", "shows", "shown", "showing", "see", "depicts", "depicted")
    context_strong_cues: tuple[str, ...] = ("pictured",)
    # A sentence AFTER the image that only points forward ("below") describes the next image;
    # one BEFORE it that only points back ("above") describes the previous one.
    context_forward_cues: tuple[str, ...] = ("below", "following")
    context_backward_cues: tuple[str, ...] = ("above", "previous", "preceding")
    # Strip "Photo: Name" / "Credit: ..." / "(c) ..." tails and "Figure 3:" labels from captions.
    strip_credits: bool = True
    strip_figure_labels: bool = True
    # A caption whose words are all placeholder words (after dropping digits) is not a caption.
    placeholder_words: tuple[str, ...] = (
        "image", "images", "img", "photo", "photos", "picture", "pic", "pics", "logo", "icon", "banner",
        "thumbnail", "thumb", "placeholder", "untitled", "spacer", "blank", "default", "avatar",
        "graphic", "figure", "illustration", "screenshot", "foto", "bild", "imagen", "null", "none", "undefined",
        "alt", "dummy", "header", "featured", "feature", "hero", "slide", "gallery", "video", "clip",
    )
    # Not language: fewer letters than this share of non-space chars, or fewer word-like
    # tokens (2+ letters, no digits) than this share of tokens.
    min_letter_ratio: float = 0.5
    min_word_token_ratio: float = 0.5
    # Caption language via py3langid (m3w_pipeline.extract.lang); empty: any language, no identification.
    languages: tuple[str, ...] = ()
    min_language_score: float = 0.5
    # Original image size (before resizing) a pair needs; ALIGN used 200.
    min_image_side: int = 64
    # Pairs per tar shard and shard name prefixes (ALIGN and LTIP are separate shard sets).
    samples_per_shard: int = 10_000
    align_prefix: str = "align"
    ltip_prefix: str = "ltip"


@dataclass(frozen=True)
class VideoConfig:
    """Video-text pairs (m3w_pipeline/video.py probes and samples, pairs.py captions)."""

    # Video bytes above this are not decoded (too-large); WarcConfig.max_media_bytes caps records.
    # Also the byte cap of a fetched video (--fetch-media), in place of FetchConfig.max_bytes.
    max_video_bytes: int = 25_000_000
    # Containers kept (sniffed from bytes); others are unsupported-format. These are the
    # extensions video2dataset readers and m3w stats/validate know.
    allowed_formats: tuple[str, ...] = ("mp4", "mov", "webm", "mkv")
    min_side: int = 64
    max_aspect_ratio: float = 3.0
    # Frames larger than this many pixels (width * height) are too-large (8K is 33 MP).
    max_frame_pixels: int = 16_777_216
    min_duration_s: float = 0.5
    max_duration_s: float = 600.0
    # Flamingo: 8 frames at 1 FPS. The clip is cut into num_frames slots of at most 1/frame_rate
    # seconds ("center": the slots sit in the middle of the clip, "start": from its start);
    # the frame on screen at each slot's midpoint is kept. Shorter clips: evenly spread slots.
    num_frames: int = 8
    frame_rate: float = 1.0
    frame_anchor: str = "center"
    # A decode error before all frames are sampled drops the video (decode-error) unless at
    # least this many frames were sampled; then it is kept, marked partial.
    min_frames: int = 8
    # Decode budget per video (frames), against pathological frame rates.
    max_decoded_frames: int = 20_000
    # Seek (to the keyframe before) when the first sampled frame is later than this.
    seek_after_s: float = 10.0
    decode_threads: int = 1
    # Caption sources in order of preference (figcaption, title = title/aria-label, context =
    # adjacent text pointing at the video, track = WebVTT text when the file is in the crawl,
    # page-title).
    caption_sources: tuple[str, ...] = ("figcaption", "title", "context", "track", "page-title")
    caption_min_words: int = 2
    caption_max_words: int = 256
    # Media nouns for the context rule (PairConfig's pointers and directions apply).
    context_cues: tuple[str, ...] = ("video", "videos", "clip", "clips", "footage", "film", "filmed", "watch", "recording")
    max_track_bytes: int = 1_000_000
    samples_per_shard: int = 1000
    prefix: str = "video"
    # The stored video (KEY.<ext>): "original" keeps the crawled bytes and container; "mp4" stores
    # MP4 for video2dataset-style loaders that read KEY.mp4 (remuxed; re-encoded when the codec
    # cannot go into MP4; a video neither can make is dropped as mp4-failed).
    container: str = "original"


@dataclass(frozen=True)
class BuildConfig:
    warc: WarcConfig = field(default_factory=WarcConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    video: VideoConfig = field(default_factory=VideoConfig)

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BuildConfig":
        """Build from a (possibly partial) nested dict; unknown keys and wrong types are errors naming the key."""
        return from_dict(cls, data)


# Range rules, checked when a BuildConfig is made, so a bad value stops the build before any work
# (not as a ZeroDivisionError on a worker an hour in). Rules go by field name, so a new threshold
# is covered by the naming convention it follows.
_AT_LEAST_ONE = {
    "samples_per_shard", "max_page_bytes", "max_media_bytes", "max_bytes", "max_video_bytes", "max_track_bytes",
    "max_side", "jpeg_quality", "max_image_pixels", "max_frame_pixels", "max_decoded_frames", "num_frames",
    "decode_threads", "shingle_size", "num_perm", "bands", "rows", "workers", "per_host_concurrency",
    "char_repetition_n", "word_repetition_n", "lang_id_max_chars", "max_caption_chars", "cc_rounds",
}
_ORDERED_PAIRS = (  # (section, smaller, larger)
    ("filters", "min_words_per_document", "max_words_per_document"),
    ("filters", "min_images_per_document", "max_images_per_document"),
    ("filters", "min_words_per_text_node", "max_words_per_text_node"),
    ("video", "min_duration_s", "max_duration_s"),
    ("pairs", "align_min_words", "align_max_words"),
    ("pairs", "ltip_min_words", "ltip_max_words"),
    ("video", "caption_min_words", "caption_max_words"),
)


def config_problems(config: BuildConfig) -> list[str]:
    """Every out-of-range value of `config`, each naming its key (empty when all is well)."""
    problems = []
    for section in fields(config):
        values = getattr(config, section.name)
        for f in fields(values):
            value, key, words = getattr(values, f.name), f"{section.name}.{f.name}", f.name.split("_")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if value < 0:
                problems.append(f"{key} must be >= 0, got {value}")
            elif f.name in _AT_LEAST_ONE and value < 1:
                problems.append(f"{key} must be >= 1, got {value}")
            elif f.name.endswith("_timeout_s") and value <= 0:
                problems.append(f"{key} must be > 0, got {value}")
            elif "aspect" in words and value < 1:
                problems.append(f"{key} must be >= 1 (long side over short side), got {value}")
            elif ({"fraction", "ratio", "jaccard"} & set(words)) and "aspect" not in words and value > 1:
                problems.append(f"{key} is a fraction: it must be <= 1, got {value}")
    if config.image.jpeg_quality > 100:
        problems.append(f"image.jpeg_quality must be <= 100, got {config.image.jpeg_quality}")
    if config.dedup.bands * config.dedup.rows > config.dedup.num_perm:
        problems.append(f"dedup.bands x dedup.rows ({config.dedup.bands * config.dedup.rows}) must be <= dedup.num_perm ({config.dedup.num_perm})")
    if config.video.container not in ("original", "mp4"):
        problems.append(f"video.container must be original or mp4, got {config.video.container!r}")
    for section, low, high in _ORDERED_PAIRS:
        values = getattr(config, section)
        if hasattr(values, low) and hasattr(values, high) and getattr(values, low) > getattr(values, high):
            problems.append(f"{section}.{low} ({getattr(values, low)}) must be <= {section}.{high} ({getattr(values, high)})")
    return problems

