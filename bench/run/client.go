package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
)

// api is a thin HTTP client for the service's /api/v1.
type api struct {
	base string
	c    *http.Client
}

func newAPI(base string) *api {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        2048,
		MaxIdleConnsPerHost: 2048,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &api{base: strings.TrimRight(base, "/") + "/api/v1", c: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// reply is a response: status, body and the X-Mana-Position header.
type reply struct {
	code     int
	body     []byte
	position string
}

// do sends one request; a transport error is status 0.
func (a *api) do(method, path string, body any, bearer string) reply {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			panic(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.base+path, rd)
	if err != nil {
		panic(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := a.c.Do(req)
	if err != nil {
		return reply{}
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return reply{code: resp.StatusCode, body: out, position: resp.Header.Get("X-Mana-Position")}
}

const benchPassword = "bench password, long enough"

// account is a registered user with a session.
type account struct {
	email   string
	id      uuid.UUID
	access  string
	refresh string
}

func (a *api) register(email string) (uuid.UUID, error) {
	r := a.do(http.MethodPost, "/auth/register", map[string]string{"email": email, "password": benchPassword}, "")
	if r.code != http.StatusCreated {
		return uuid.Nil, fmt.Errorf("register %s: %d %s", email, r.code, r.body)
	}
	var u struct{ ID uuid.UUID }
	if err := json.Unmarshal(r.body, &u); err != nil {
		return uuid.Nil, err
	}
	return u.ID, nil
}

type tokenPair struct {
	AccessToken  string `json:"accessToken"`
	RefreshToken string `json:"refreshToken"`
}

func (a *api) login(email string) (tokenPair, reply) {
	r := a.do(http.MethodPost, "/auth/login", map[string]string{"email": email, "password": benchPassword}, "")
	var p tokenPair
	if r.code == http.StatusOK {
		_ = json.Unmarshal(r.body, &p)
	}
	return p, r
}

func (a *api) refreshPair(token string) (tokenPair, reply) {
	r := a.do(http.MethodPost, "/auth/refresh", map[string]string{"refreshToken": token}, "")
	var p tokenPair
	if r.code == http.StatusOK {
		_ = json.Unmarshal(r.body, &p)
	}
	return p, r
}

// spend spends 1 credit; 201 is success.
func (a *api) spend(access string) reply {
	return a.do(http.MethodPost, "/credits/use", map[string]any{"amount": 1, "appId": "bench", "description": "bench"}, access)
}

// newAccount registers email and logs it in.
func (a *api) newAccount(email string) (account, error) {
	id, err := a.register(email)
	if err != nil {
		return account{}, err
	}
	p, r := a.login(email)
	if r.code != http.StatusOK {
		return account{}, fmt.Errorf("login %s: %d %s", email, r.code, r.body)
	}
	return account{email: email, id: id, access: p.AccessToken, refresh: p.RefreshToken}, nil
}
