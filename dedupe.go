package falwebhook

import "net/http"

// dedupeConfig is filled in by the dedupe work.
type dedupeConfig struct{}

func (v *Verifier) serveDedupe(w http.ResponseWriter, r *http.Request, ev *Event, next http.Handler) {
	next.ServeHTTP(w, r)
}
