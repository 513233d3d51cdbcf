"""Message keys shared by the server and the ClientApp, defined once.

Flower messages carry records under string keys. Every key fedsim itself reads or writes is
defined here so that the server and the device side can never drift apart. Keys that Flower's
stock strategies already use (``num-examples``, ``proximal-mu``, ``server-round``) keep Flower's
spelling so that any ``flwr.serverapp.strategy`` class understands fedsim's replies.
"""

# --- ConfigRecord keys (server -> client) ----------------------------------------------------
CLIENT_ID = "fedsim.client-id"  # the virtual client (phone) this message trains as
SERVER_ROUND = "server-round"  # injected by Flower's strategies; fedsim also sets it
PROXIMAL_MU = "proximal-mu"  # FedProx (Li et al. 2020) sets it in configure_train

# Optional per-round overrides of the local recipe a strategy may put in its train config.
LOCAL_EPOCHS = "local-epochs"
BATCH_SIZE = "batch-size"
LEARNING_RATE = "lr"

# --- Record names in a reply (client -> server) ----------------------------------------------
METRICS = "metrics"  # the reply's MetricRecord

# --- MetricRecord keys (client -> server) ----------------------------------------------------
NUM_EXAMPLES = "num-examples"  # Flower's default `weighted_by_key`
TRAIN_LOSS = "train_loss"  # QFedAvg's default `train_loss_key`
TRAIN_STEPS = "fedsim.train-steps"
COMPUTE_S = "fedsim.compute-s"  # wall seconds the client spent training (host CPU)

# --- Local DP (server -> client config, client -> server metric) -----------------------------
LOCAL_DP_CLIPPING_NORM = "fedsim.ldp-clipping-norm"
LOCAL_DP_NOISE_MULTIPLIER = "fedsim.ldp-noise-multiplier"
CLIPPED = "fedsim.clipped"  # 1 if the client's update was scaled down (simulator diagnostic)

# --- Fault injection (server -> client config) ------------------------------------------------
FAULT = "fedsim.fault"  # "error" | "slow" | "kill": what this client-round must do (see faults)
SLOW_FOR_S = "fedsim.slow-for-s"  # how long a "slow" client-round sleeps before training
HANDLE_S = "fedsim.handle-s"  # wall seconds the ClientApp spent on the message, all included
RECOVERED = "fedsim.recovered"  # 1: this reply is Ray's re-run after the actor died mid-message

# --- Update payloads (issue 5) ---------------------------------------------------------------
# A reply's ArrayRecord holds the *encoded* upload (codec parts keyed "<tensor>/<part>"); this
# ConfigRecord beside it holds the codec's metadata and what the decoded tensors are.
PAYLOAD = "fedsim.payload"  # the reply's ConfigRecord of payload metadata
PAYLOAD_KIND = "payload-kind"  # in PAYLOAD: weights | delta | gradient (fedsim.updates)
UPDATE_KIND = "fedsim.update-kind"  # MetricRecord: index into fedsim.updates.KINDS
PAYLOAD_BYTES = "fedsim.payload-bytes"  # MetricRecord: exact encoded upload size
# The payload's parts travel packed into one buffer (issue 25: one Array, not one a tensor);
# in PAYLOAD, what each part is: names, dtypes, number of dimensions and the dimensions.
PACKED = "fedsim.packed"  # the ArrayRecord's one entry, and its Array's stype
PART_NAMES = "fedsim.part-names"
PART_DTYPES = "fedsim.part-dtypes"
PART_NDIMS = "fedsim.part-ndims"
PART_DIMS = "fedsim.part-dims"

# --- On-device training (issue 3: server -> client config) ------------------------------------
# The fine-tuning mode the server's memory-budget policy chose for this phone this round; the
# batch size it chose travels as BATCH_SIZE above.
FINETUNE_MODE = "fedsim.finetune-mode"
# Most samples a pass over the whole shard may run at once (frozen features, calibration,
# teacher logits, gradient chunks), chosen with the batch so the whole client-round fits.
CHUNK = "fedsim.chunk"
CACHE_FEATURES = "fedsim.cache-features"  # head / int8_head: run the frozen backbone once
DISTILL = "fedsim.distill"  # 1: train against the teacher's logits on the shard (distill.where=client)

# --- Client algorithms (issue 23: SCAFFOLD, FedNova; clients/algorithms) ----------------------
# The ArrayRecord a client algorithm's extra tensors travel in, beside the model's: the server
# half's (SCAFFOLD's control variate c) in a train message, the phone half's (SCAFFOLD's
# control-variate change) in its reply. Server halves take it out before the user's strategy
# aggregates (Flower's strategies expect one ArrayRecord per reply).
ALGORITHM = "fedsim.algorithm"
NORMALISED_STEPS = "fedsim.normalised-steps"  # FedNova's ||a_i||_1 (MetricRecord)

# --- Bundles (issue 25: many phones per message; fedsim.bundle_wire) ---------------------------
# A bundle carries several phones' records in one message, each record once however many phones
# share it (the global model); this ConfigRecord says which records are whose, and in a reply
# which phones failed and why.
BUNDLE = "fedsim.bundle"

# Partial sums (simulation.partial_sums, clients.partial_sums): a slot replies with the
# example-weighted mean of its phones' models instead of each upload. In a bundle's layout: sum
# or not, and the client time-out a phone must stay under to count (the server's own rule).
PARTIAL_SUMS = "fedsim.partial-sums"
CLIENT_TIMEOUT_S = "fedsim.client-timeout-s"
# In a reply bundle, the prefix of the mean's records (its payload, metadata and metrics).
PARTIAL = "fedsim.partial"
PHONES = "fedsim.phones"  # MetricRecord of a partial: the phones summed into it
