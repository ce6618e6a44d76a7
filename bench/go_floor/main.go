// The compiled floor: Go's net/http and go-redis answering a lookup with one Redis MGET of the same keys
// skewless reads, as bench/floor_app.py does in Python (the same request, the same keys, the same answer: a
// JSON list of the raw rows, null for a missing key). It shows what a compiled server does at the least on
// this machine, so the benchmark can say how close skewless comes to that limit.
//
//	FLOOR_REDIS_URL=redis://127.0.0.1:6379/0 FLOOR_PREFIXES=bench:user_profile:v1:,bench:user_activity:v1: \
//	    go-floor --host 127.0.0.1 --port 6571
//
// bench/run.py builds it (go build) into bench/.work/bin and starts it beside the Python floor.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

type lookupRequest struct {
	Entities struct {
		UserID []json.Number `json:"user_id"`
	} `json:"entities"`
}

type floor struct {
	client   *redis.Client
	prefixes []string
}

// features answers POST /v1/features: one key per prefix and entity (prefixes outer, as the Python floor
// builds them), one MGET, the rows as a JSON list of strings.
func (f *floor) features(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	var body lookupRequest
	decoder := json.NewDecoder(r.Body)
	decoder.UseNumber()
	if err := decoder.Decode(&body); err != nil {
		http.Error(w, "invalid body: "+err.Error(), http.StatusBadRequest)
		return
	}
	ids := body.Entities.UserID
	keys := make([]string, 0, len(f.prefixes)*len(ids))
	for _, prefix := range f.prefixes {
		for _, id := range ids {
			keys = append(keys, prefix+id.String())
		}
	}
	rows, err := f.client.MGet(r.Context(), keys...).Result()
	if err != nil {
		http.Error(w, "redis: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	var out bytes.Buffer
	encoder := json.NewEncoder(&out)
	encoder.SetEscapeHTML(false) // as orjson writes them: '<', '>' and '&' stay as they are
	if err := encoder.Encode(rows); err != nil {
		http.Error(w, "encoding: "+err.Error(), http.StatusInternalServerError)
		return
	}
	answer := bytes.TrimRight(out.Bytes(), "\n")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(answer)))
	w.Write(answer)
}

func health(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`{"status":"ok"}`))
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 6571, "port to listen on")
	flag.Parse()
	url := os.Getenv("FLOOR_REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/0"
	}
	options, err := redis.ParseURL(url)
	if err != nil {
		log.Fatalf("FLOOR_REDIS_URL: %v", err)
	}
	f := &floor{client: redis.NewClient(options)}
	for _, prefix := range strings.Split(os.Getenv("FLOOR_PREFIXES"), ",") {
		if prefix != "" {
			f.prefixes = append(f.prefixes, prefix)
		}
	}
	if err := f.client.Ping(context.Background()).Err(); err != nil {
		log.Fatalf("redis at %s: %v", url, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/features", f.features)
	mux.HandleFunc("/health", health)
	address := net.JoinHostPort(*host, strconv.Itoa(*port))
	fmt.Fprintf(os.Stderr, "go floor listening on %s\n", address)
	log.Fatal(http.ListenAndServe(address, mux))
}
