// Command receiver runs one of the router recipes as a fal.ai webhook
// receiver, wired for production: your fal user id pinned, rejections
// logged, fal's keys loaded at startup, deliveries deduplicated, server
// timeouts set and a graceful shutdown.
//
//	go run ./cmd/receiver -router chi -user-id <your fal user id>
//
// Point a request's fal_webhook at http://<host>:8080/fal/webhook.
//
// To try it without fal, verify with development keys instead of fal's:
// -jwks FILE reads a JWKS document such as "falwebhook keygen" writes, and
// "falwebhook send" signs deliveries with its private key:
//
//	falwebhook keygen
//	go run ./cmd/receiver -user-id dev-user -jwks falwebhook-dev.jwks.json
//	falwebhook send -key falwebhook-dev.key.pem -user-id dev-user -sample ok http://127.0.0.1:8080/fal/webhook
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/falwebhook/falwebhook"
	chirecipe "github.com/falwebhook/falwebhook/examples/chi"
	echorecipe "github.com/falwebhook/falwebhook/examples/echo"
	fiberrecipe "github.com/falwebhook/falwebhook/examples/fiber"
	ginrecipe "github.com/falwebhook/falwebhook/examples/gin"
	"github.com/falwebhook/falwebhook/examples/nethttp"
	"github.com/gin-gonic/gin"
	"github.com/gofiber/fiber/v2"
)

// maxBody is the largest delivery accepted, in bytes: the Verifier's
// default, given to fiber too.
const maxBody = 25 << 20

func main() {
	router := flag.String("router", "nethttp", "the recipe to run: nethttp, chi, gin, echo or fiber")
	addr := flag.String("addr", ":8080", "the address to listen on")
	userID := flag.String("user-id", "", "your fal user id (required); deliveries for other fal accounts are answered 403")
	jwksFile := flag.String("jwks", "", "verify with the keys of the JWKS document in `FILE` (development keys, such as falwebhook keygen writes) instead of fal's")
	flag.Parse()
	if *userID == "" {
		fmt.Fprintln(os.Stderr, "receiver: -user-id is required")
		os.Exit(2)
	}
	if err := run(*router, *addr, *userID, *jwksFile); err != nil {
		slog.Error("receiver", "err", err)
		os.Exit(1)
	}
}

func run(router, addr, userID, jwksFile string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	logger := slog.Default()
	v, err := newVerifier(userID, jwksFile, logger)
	if err != nil {
		return err
	}
	// A wrong JWKS URL or a network policy blocking it fails here, not as
	// 503 answers to fal.
	if err := v.Refresh(ctx); err != nil {
		return err
	}
	d := &falwebhook.Dedupe{Logger: logger} // in memory: one replica (redisdedupe for more)

	var listen func() error
	var shutdown func(context.Context) error
	if router == "fiber" {
		app := fiberrecipe.New(v, d, handle, fiber.Config{
			BodyLimit:             maxBody,
			ReadTimeout:           time.Minute,
			IdleTimeout:           2 * time.Minute,
			DisableStartupMessage: true,
		})
		listen = func() error { return app.Listen(addr) }
		shutdown = app.ShutdownWithContext
	} else {
		var h http.Handler
		switch router {
		case "nethttp":
			h = nethttp.New(v, d, handle)
		case "chi":
			h = chirecipe.New(v, d, handle)
		case "gin":
			gin.SetMode(gin.ReleaseMode)
			h = ginrecipe.New(v, d, handle)
		case "echo":
			h = echorecipe.New(v, d, handle)
		default:
			return fmt.Errorf("unknown router %q", router)
		}
		srv := &http.Server{
			Addr:              addr,
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       time.Minute,
			IdleTimeout:       2 * time.Minute,
		}
		listen = func() error {
			if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		}
		shutdown = srv.Shutdown
	}

	errc := make(chan error, 1)
	go func() { errc <- listen() }()
	logger.Info("receiving fal webhooks", "router", router, "addr", addr, "path", "/fal/webhook")
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Answer the deliveries in flight, then let the dedupe store record
	// them, so that fal's retries are answered as duplicates.
	return errors.Join(shutdown(sctx), <-errc, d.Shutdown(sctx))
}

// newVerifier returns the receiver's Verifier: pinned to userID, logging
// to logger, with fal's keys, or with the keys of the JWKS document in
// jwksFile when it is not empty.
func newVerifier(userID, jwksFile string, logger *slog.Logger) (*falwebhook.Verifier, error) {
	opts := []falwebhook.Option{
		falwebhook.WithUserIDs(userID),
		falwebhook.WithLogger(logger),
		falwebhook.WithMaxBodySize(maxBody),
	}
	if jwksFile != "" {
		data, err := os.ReadFile(jwksFile)
		if err != nil {
			return nil, fmt.Errorf("-jwks: %w", err)
		}
		keys, err := falwebhook.ParseJWKS(data)
		if err != nil {
			return nil, fmt.Errorf("-jwks %s: %w", jwksFile, err)
		}
		// Fixed keys: never refetched, so a mismatch is always a 401.
		opts = append(opts, falwebhook.WithKeys(falwebhook.StaticKeys(keys...)))
		logger.Warn("verifying with the keys of a JWKS file, not fal's: for development only", "file", jwksFile, "keys", len(keys))
	}
	return falwebhook.NewVerifier(opts...), nil
}

// handle is where the work goes; here it logs each result. An error makes
// the answer 500, and fal retries the delivery.
func handle(ctx context.Context, ev *falwebhook.Event) error {
	if err := ev.Err(); err != nil { // status ERROR: the 422 detail and all
		slog.WarnContext(ctx, "fal request failed", "err", err)
		return nil // a retry would bring the same failure
	}
	out, err := falwebhook.DecodePayload[falwebhook.ImageOutput](ev)
	if err != nil {
		slog.ErrorContext(ctx, "unexpected output", "request_id", ev.RequestID, "err", err)
		return nil // a retry would bring the same bytes
	}
	slog.InfoContext(ctx, "fal request done", "request_id", ev.RequestID, "images", len(out.Images), "seed", out.Seed)
	return nil
}
