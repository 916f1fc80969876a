package pgtest

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/ory/dockertest/v3"
	"github.com/ory/dockertest/v3/docker"
)

// startDocker runs postgres:15 in a container through ory/dockertest and
// returns its admin DSN, or an error when no Docker engine answers.
//
// A test process has no hook at exit, so the container cannot be stopped by
// the process itself: Docker kills it when the process's -test.timeout (plus
// a margin) has passed, and removes it once stopped.
func startDocker() (string, error) {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return "", fmt.Errorf("docker client: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := pool.Client.PingWithContext(ctx); err != nil {
		return "", fmt.Errorf("no Docker engine: %w", err)
	}
	res, err := pool.RunWithOptions(&dockertest.RunOptions{
		Repository: "postgres",
		Tag:        "15",
		Env:        []string{"POSTGRES_PASSWORD=pgtest", "POSTGRES_DB=test"},
		// Same durability trade-off as NewCluster: a test server needs no
		// crash safety, but synchronous_commit stays on like in production.
		Cmd:    []string{"postgres", "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"},
		Labels: map[string]string{"org.manacore.pgtest": "true"},
	}, func(hc *docker.HostConfig) {
		hc.AutoRemove = true
		hc.RestartPolicy = docker.RestartPolicy{Name: "no"}
	})
	if err != nil {
		return "", fmt.Errorf("start postgres:15 container: %w", err)
	}
	_ = res.Expire(uint(containerLifetime().Seconds()))

	dsn := "postgres://postgres:pgtest@" + res.GetHostPort("5432/tcp") + "/test?sslmode=disable"
	pool.MaxWait = time.Minute
	err = pool.Retry(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return ping(ctx, dsn)
	})
	if err != nil {
		_ = res.Close()
		return "", fmt.Errorf("postgres:15 container did not become ready: %w", err)
	}
	return dsn, nil
}

// containerLifetime is how long the container may outlive its start: the
// test binary's -test.timeout plus a margin, or an hour without one.
func containerLifetime() time.Duration {
	if f := flag.Lookup("test.timeout"); f != nil {
		if g, ok := f.Value.(flag.Getter); ok {
			if d, ok := g.Get().(time.Duration); ok && d > 0 {
				return d + 5*time.Minute
			}
		}
	}
	return time.Hour
}
