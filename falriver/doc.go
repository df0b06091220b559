// Package falriver is a durable inbox for fal webhooks on River
// (github.com/riverqueue/river): verify a delivery, store it as a job,
// acknowledge fal in milliseconds, and do the slow work later, once per
// request, with retries, on SQLite for one process or Postgres for many.
//
// fal waits 15 s for an answer to its first delivery attempt (120 s for
// retries) and then hangs up: a handler that downloads and re-uploads
// media can take longer, and net/http then cancels it mid-way. The inbox
// answers as soon as the delivery is committed to the database, and a
// River worker processes it:
//
//	v := falwebhook.NewVerifier(falwebhook.WithUserIDs(os.Getenv("FAL_USER_ID")))
//	workers := river.NewWorkers()
//	river.AddWorker(workers, falriver.NewWorker(func(ctx context.Context, job *river.Job[falriver.Args], ev *falwebhook.Event) error {
//		return process(ctx, ev) // an error is retried
//	}))
//	client, _ := river.NewClient(riverpgxv5.New(pool), &river.Config{
//		Queues:               map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 16}},
//		Workers:              workers,
//		RescueStuckJobsAfter: falriver.DefaultTimeout + time.Minute,
//	})
//	http.Handle("POST /fal/webhook", falriver.NewInbox(v, client))
//
// # Exactly once
//
// A delivery job (Args) is unique by request id over every job state, so
// fal's redeliveries, on any replica, and the reconcile backstop's fetched
// result make one job between them: the inbox answers 200 to each, the
// later ones marked duplicate. The worker runs the job until it succeeds,
// at least once. It runs exactly once in effect when the work's database
// writes and river.JobCompleteTx commit in one transaction (see the
// example): a crash before the commit rolls both back and the job runs
// again; after it, the job is complete. Side effects outside that
// database (an upload, an email) can happen twice when a process dies
// between doing them and committing: make them idempotent by request id.
//
// # River settings that matter
//
//   - Job timeout: NewWorker's jobs run up to DefaultTimeout (5 min) an
//     attempt, where River's default is one minute.
//   - RescueStuckJobsAfter: a job whose process died stays running until
//     both this (River's default: one hour) and the job's timeout have
//     passed since its attempt began; River's rescuer looks every 30 s.
//     Set it just above the job timeout, DefaultTimeout + time.Minute:
//     a replica's crash then delays its jobs about six and a half
//     minutes at most. On SQLite, falsqlite.Open takes back a dead
//     predecessor's jobs at once, since one process owns the file.
//   - Retention: River deletes completed and cancelled jobs after 24 h by
//     default (CompletedJobRetentionPeriod, CancelledJobRetentionPeriod),
//     discarded ones after 7 days. A deleted job no longer blocks its
//     request id, so keep them 24 h or more: fal redelivers for about an
//     hour.
//   - Attempts: DefaultMaxAttempts (12) with NewWorker's retry schedule
//     (15 s doubling to an hour) spans about four hours; River's default
//     of 25 attempts with its own schedule spans weeks.
//   - Queues: the inbox inserts on River's default queue. A client used
//     only for inserting (no Queues, no Workers) serves the inbox; workers
//     may run elsewhere.
//
// # Never lose a result
//
// fal keeps a finished request's result for an hour, six minutes when it
// is 10 KB or larger, and stops its webhook retries when the result
// expires. A receiver that is down or misconfigured for longer loses
// those results. Track records each request submitted with falqueue, and
// the Reconciler (NewReconciler) polls fal's queue for it, and fetches and
// stores the result as a delivery when no webhook came within Grace of its
// completion. Results already gone when it looks are logged and counted:
// the backstop shortens the window of loss, it cannot reach past fal's
// retention.
//
// # Databases
//
// SQLite (package falsqlite, riversqlite and modernc.org/sqlite, no cgo):
// one file, one process, one writer at a time. Postgres (riverpgxv5 and
// pgx): many replicas. Run River's migrations first: falsqlite.Open does
// for SQLite; for Postgres, rivermigrate (or the river CLI: river migrate-up
// --database-url "$DATABASE_URL").
package falriver
