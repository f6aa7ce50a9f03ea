"""The wire contract. The tray imports these and nothing else from the agent.

Requests follow OpenAI's chat completions API; responses add an ``x_aifinops`` object that
OpenAI clients ignore and ours read (cost, route, request id).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

# OpenAI request fields that are forwarded to cloud endpoints unchanged. Any other unknown
# field is refused with a 400 rather than silently dropped.
PASSTHROUGH_FIELDS = frozenset(
    {
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "service_tier",
        "reasoning_effort",
    }
)
# Fields the agent validates (and the local model honours), forwarded to cloud endpoints as sent.
TOOL_AND_FORMAT_FIELDS = ("tools", "tool_choice", "parallel_tool_calls", "response_format")
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
FEATURE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}"


def _metadata(metadata: dict[str, str]) -> dict[str, str]:
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise ValueError("at most 16 keys of up to 64 characters, values up to 512")
    return metadata


# OpenAI's request metadata (chat and embeddings): ours reads metadata.feature.
Metadata = Annotated[dict[str, str], AfterValidator(_metadata)]


def _stop(stop: str | list[str] | None) -> str | list[str] | None:
    if isinstance(stop, list) and len(stop) > 4:
        raise ValueError("at most 4 stop sequences")
    return stop


# Chat's and completions' `stop`: one sequence or up to four.
Stop = Annotated[str | list[str] | None, AfterValidator(_stop)]


def stop_sequences(stop: str | list[str] | None) -> tuple[str, ...]:
    return (stop,) if isinstance(stop, str) else tuple(stop or ())


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class FunctionCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    arguments: str = Field(max_length=1_000_000)


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant turn, sent back with the tool's answer."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=128)
    tool_call_id: str | None = Field(None, min_length=1, max_length=200)
    refusal: str | None = None  # SDKs send back an assistant message as they got it

    @model_validator(mode="after")
    def _tool_turns(self) -> ChatMessageIn:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message needs tool_call_id, and only a tool message has one")
        if self.content is None and not (self.role == "assistant" and (self.tool_calls or self.refusal)):
            raise ValueError("content is required (only an assistant message with tool_calls may omit it)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = Field(None, max_length=100_000)
    parameters: dict[str, Any] | None = None  # a JSON Schema object
    strict: bool | None = None


class ToolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionIn


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=TOOL_NAME_PATTERN)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only then")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=1000)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=16)
    stop: Stop = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None
    cache: bool | None = None  # aifinops: false skips the semantic cache
    tools: list[ToolIn] | None = Field(None, min_length=1, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or ()}
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools")
        elif self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs tools")
        return self

    def extra_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # read from the provider's prompt cache, billed at its rate


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()
    completion_tokens_details: CompletionTokensDetails = CompletionTokensDetails()


class AIFinOpsInfo(BaseModel):
    """Our additions to a completion: what it cost and who answered."""

    request_id: str
    route: str
    model: str
    cost_usd: str  # a decimal string, or "unknown"
    cost_micro_usd: int | None
    price_source: str
    tokens_estimated: bool
    cache: Literal["hit", "miss", "bypass"]
    cache_similarity: float | None = None
    cache_verifier_score: float | None = None  # P(same question) from the cache's verifier
    cache_entry_id: int | None = None
    tier: str = ""  # "local", "cheap" or "strong"; "" for a model in no tier or a cache hit
    reason: str = ""  # why this route (the router's words)
    route_score: float | None = None
    prompt_tokens_before: int | None = None  # before the prompt optimiser
    prompt_tokens_after: int | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's shape: id, type, function {name, arguments}


class Choice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: str
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    x_aifinops: AIFinOpsInfo


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    x_aifinops: AIFinOpsInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str
    aifinops_kind: Literal["chat", "embedding"] = "chat"  # ours: which endpoint takes it


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    budget: dict[str, str | int] | None = None  # budget_exceeded: which budget, spent, amount, resets_at


class ErrorBody(BaseModel):
    error: ErrorDetail


class SpendRow(BaseModel):
    key: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: str
    cost_micro_usd: int
    cost_saved_usd: str
    unpriced_requests: int
    failed_requests: int
    # The provider's prompt cache: input tokens it served and what that took off the bill.
    cache_read_tokens: int = 0
    provider_cache_saved_usd: str = "0.000000"
    # GPU time charged to this key (by user or department): busy time of their local requests,
    # other processes' owners ("os:<name>"), idle time ("idle", "idle:<department>").
    gpu_cost_usd: str = "0.000000"
    gpu_cost_micro_usd: int = 0


class SpendReport(BaseModel):
    by: str
    since: str
    scope: Literal["own", "all"]
    total_cost_usd: str
    total_cost_micro_usd: int
    unpriced_requests: int
    rows: list[SpendRow]
    total_gpu_cost_usd: str = "0.000000"
    total_gpu_cost_micro_usd: int = 0


class Me(BaseModel):
    user: str
    department: str
    admin: bool
    cloud_paused: bool = False  # "local only", set from the tray


class PreferencesIn(BaseModel):
    """POST /api/v1/preferences: what the user may change about their own requests."""

    model_config = ConfigDict(extra="forbid", strict=True)

    cloud_paused: bool


class RouterInfo(BaseModel):
    enabled: bool
    tiers: dict[str, str] = {}  # tier -> model
    scoring: Literal["model", "rules", "none"] = "none"  # trained artifact, or rules
    problem: str = ""  # why the rules are used
    cascade: bool = False


class Info(BaseModel):
    name: Literal["aifinops"] = "aifinops"
    version: str
    api: Literal["v1"] = "v1"
    router: RouterInfo | None = None


class RequestEntry(BaseModel):
    """One ledger row as the API shows it."""

    id: str
    ts: str
    user: str
    department: str
    feature: str
    requested_model: str
    model: str
    provider: str
    route: str
    reason: str
    input_tokens: int
    output_tokens: int
    tokens_estimated: bool
    cost_usd: str
    cost_micro_usd: int | None
    price_source: str
    latency_ms: int
    status: str
    error_type: str
    stream: bool
    attempts: int
    tier: str = ""
    route_score: float | None = None
    confidence: float | None = None
    parent_id: str = ""
    prompt_tokens_before: int | None = None
    prompt_tokens_after: int | None = None
    optimizer_note: str = ""
    cost_saved_usd: str = "0"


class CacheStats(BaseModel):
    enabled: bool
    scope: str  # "user:<id>", "department:<name>", "organisation" or "all"
    entries: int = 0
    hits: int = 0
    saved_usd: str = "0.000000"
    saved_micro_usd: int = 0
    bytes: int = 0
    corrupt_rows_skipped: int = 0


class CacheCleared(BaseModel):
    scope: str
    removed: int


class FleetBudgetOut(BaseModel):
    """A department or organisation budget counted across the fleet (see docs/ADMIN.md)."""

    allotted_usd: str  # the part of the budget this agent may spend (claimed on the share)
    allotted_micro_usd: int
    fleet_spent_usd: str | None  # every host's spend as last recorded on the share (None: not read yet)
    fleet_spent_micro_usd: int | None
    hosts: int | None  # hosts that claimed part of it
    problem: str  # "" or why the share cannot be used, and the rule applied meanwhile


class BudgetEntry(BaseModel):
    name: str
    scope: str  # user, department, feature, organisation
    subject: str  # whose spend: the user, department or feature name; "*" for the organisation
    period: str
    action: str  # block or downgrade
    amount_usd: str
    spent_usd: str
    reserved_usd: str  # held by requests in flight
    remaining_usd: str
    amount_micro_usd: int
    spent_micro_usd: int
    reserved_micro_usd: int
    remaining_micro_usd: int
    resets_at: str
    fleet: FleetBudgetOut | None = None  # set for budgets enforced across the fleet
    # Where the period will end (agent/budgets/forecast.py): None, with forecast_note saying why,
    # while the subject has too little history.
    forecast_usd: str | None = None
    forecast_low_usd: str | None = None  # the 80% interval
    forecast_high_usd: str | None = None
    forecast_micro_usd: int | None = None
    breach_at: str | None = None  # when the projection reaches the amount (ISO, UTC); None: it does not
    forecast_note: str = ""


class ThrottleOut(BaseModel):
    user: str
    since: str  # when the runaway was caught (ISO, UTC)
    limit_per_hour: float  # requests an hour allowed until an admin lifts it
    reason: str


class ThrottleList(BaseModel):
    throttled: list[ThrottleOut]


class BudgetReport(BaseModel):
    policy_version: int | None  # None: no policy received yet, nothing is enforced
    scope: Literal["own", "all"]
    budgets: list[BudgetEntry]


class DeliveryOut(BaseModel):
    """An alert's delivery to one channel (agent.alerts.outbox)."""

    channel: str
    state: str  # pending, delivered, failed, skipped (another host of the fleet posted it)
    attempts: int
    last_error: str
    next_at: str | None  # when it is tried again (pending only)


class EventOut(BaseModel):
    id: int
    ts: str
    kind: str  # budget_alert, policy_applied, policy_rejected
    user_id: int | None
    department: str | None
    body: dict[str, Any]
    deliveries: list[DeliveryOut] = []


class EventList(BaseModel):
    events: list[EventOut]
    last_id: int  # pass as ?since= to wait for the next ones


class DailySpend(BaseModel):
    day: str  # YYYY-MM-DD, UTC
    requests: int
    cost_micro_usd: int
    cost_usd: str


class KeyedSpend(BaseModel):
    key: str
    requests: int
    cost_micro_usd: int
    cost_usd: str


class Savings(BaseModel):
    cache_micro_usd: int
    compression_micro_usd: int
    provider_cache_micro_usd: int = 0  # the provider's prompt cache (cached input at its own rate)


class GpuCosts(BaseModel):
    busy_micro_usd: int
    idle_micro_usd: int


class Totals(BaseModel):
    requests: int
    cost_micro_usd: int
    cost_usd: str


class Dashboard(BaseModel):
    """Everything the tray's dashboard shows, aggregated in the ledger (SQL)."""

    since: str
    scope: Literal["own", "all"]
    policy_version: int | None
    budgets: list[BudgetEntry]
    daily: list[DailySpend]
    by_model: list[KeyedSpend]
    by_route: list[KeyedSpend]
    by_feature: list[KeyedSpend]
    by_tier: list[KeyedSpend]
    savings: Savings
    gpu: GpuCosts | None  # None: no GPU time recorded in the period
    totals: Totals


# -- POST /v1/embeddings ----------------------------------------------------------------------

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on inputs per request


def embedding_inputs(value: Any) -> list[str] | list[list[int]]:
    """OpenAI's four shapes of ``input`` (a string, strings, token ids, token-id arrays) as a
    list of strings or a list of token-id lists; ValueError naming the item at fault."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("must be a string, an array of strings, an array of token ids or an array of token-id arrays")
    if not value:
        raise ValueError("must not be empty")
    if all(_token_id(item) for item in value):
        value = [value]  # one text, as token ids
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request, got {len(value)}")
    texts = isinstance(value[0], str)
    for i, item in enumerate(value):
        if texts and not isinstance(item, str):
            raise ValueError(f"input[{i}] is not a string (an array holds strings only, or token-id arrays only)")
        if texts and not item:
            raise ValueError(f"input[{i}] is an empty string")
        if not texts and (not isinstance(item, list) or not item or not all(_token_id(t) for t in item)):
            raise ValueError(f"input[{i}] is neither a string nor a non-empty array of token ids")
    return [item if texts else list(item) for item in value]


def _token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    input: list[str] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None  # None: float
    dimensions: int | None = Field(None, ge=1, le=65_536, strict=True)
    user: str | None = Field(None, max_length=256)  # accepted and ignored: the token says who calls
    metadata: Metadata | None = None  # metadata.feature: the feature tag, as in chat

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> list[str] | list[list[int]]:
        return embedding_inputs(value)

    def extra_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EmbeddingOut(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or base64 of the little-endian float32 values


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingInfo(BaseModel):
    """Our additions to an embeddings answer (the X-AIFinOps-* headers say the same)."""

    request_id: str
    route: str  # "local" or "cloud"
    model: str
    cost_usd: str  # a decimal string, or "unknown"
    cost_micro_usd: int | None
    price_source: str
    tokens_estimated: bool


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingOut]
    model: str
    usage: EmbeddingUsage
    x_aifinops: EmbeddingInfo
