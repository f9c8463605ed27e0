# Types of the compiled module: exactly those of the pure twin (tests enforce parity).
from ._pure import DELTA_ERROR as DELTA_ERROR
from ._pure import DELTA_NAME as DELTA_NAME
from ._pure import DELTA_USAGE as DELTA_USAGE
from ._pure import EXCHANGE_FIELDS as EXCHANGE_FIELDS
from ._pure import EXCHANGE_USAGE as EXCHANGE_USAGE
from ._pure import SSE_COMMENT as SSE_COMMENT
from ._pure import SSE_ERROR as SSE_ERROR
from ._pure import SSE_EVENT as SSE_EVENT
from ._pure import CounterBlock as CounterBlock
from ._pure import DeltaScanner as DeltaScanner
from ._pure import SSEEvent as SSEEvent
from ._pure import SSEScanner as SSEScanner
from ._pure import TokenEstimator as TokenEstimator
from ._pure import count_bytes as count_bytes
from ._pure import estimate_tokens as estimate_tokens
from ._pure import pack_exchange as pack_exchange
from ._pure import unpack_exchanges as unpack_exchanges
