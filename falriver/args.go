package falriver

import (
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// Kind is the River job kind of a delivery (Args.Kind).
const Kind = "falwebhook.delivery"

// DefaultMaxAttempts is how many times a delivery job runs before River
// discards it: with the Worker's retry schedule, the last attempt comes
// about four hours after the first.
const DefaultMaxAttempts = 12

// Source says how a delivery reached the inbox.
type Source string

const (
	// SourceWebhook is a webhook fal sent and the Verifier accepted.
	SourceWebhook Source = "webhook"

	// SourceReconcile is a result the reconcile backstop fetched from fal's
	// queue because no webhook for the request had arrived (NewReconciler).
	SourceReconcile Source = "reconcile"
)

// Args is the job a verified delivery becomes. It is a River unique job
// keyed on RequestID alone, unique over every job state (completed,
// cancelled and discarded jobs too, for as long as River keeps them), so
// any number of deliveries of one request, on any replica, by the webhook
// or by the reconcile backstop, make one job.
//
// Body is the verified raw body exactly as received (base64 in the job's
// JSON), so the Worker parses the very bytes that were signed.
type Args struct {
	// RequestID is the signed X-Fal-Webhook-Request-Id of the delivery.
	RequestID string `json:"request_id" river:"unique"`

	// UserID is the signed X-Fal-Webhook-User-Id: the fal account.
	UserID string `json:"user_id"`

	// Body is the delivery's body, byte for byte.
	Body []byte `json:"body"`

	// ReceivedAt is when the inbox accepted the delivery (UTC).
	ReceivedAt time.Time `json:"received_at"`

	// Source is SourceWebhook or SourceReconcile.
	Source Source `json:"source"`
}

// Kind returns Kind.
func (Args) Kind() string { return Kind }

// allStates are the states a delivery's uniqueness spans: all of them,
// so that a completed, cancelled or discarded delivery is not made again
// by a later redelivery.
var allStates = []rivertype.JobState{
	rivertype.JobStateAvailable,
	rivertype.JobStateCancelled,
	rivertype.JobStateCompleted,
	rivertype.JobStateDiscarded,
	rivertype.JobStatePending,
	rivertype.JobStateRetryable,
	rivertype.JobStateRunning,
	rivertype.JobStateScheduled,
}

// InsertOpts makes a delivery unique by its request id in every state, with
// DefaultMaxAttempts attempts, on River's default queue.
func (Args) InsertOpts() river.InsertOpts {
	return river.InsertOpts{
		MaxAttempts: DefaultMaxAttempts,
		UniqueOpts: river.UniqueOpts{
			ByArgs:  true,
			ByState: allStates,
		},
	}
}
