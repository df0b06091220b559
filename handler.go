package falwebhook

type middlewareConfig struct{}

func defaultMiddlewareConfig() middlewareConfig { return middlewareConfig{} }
