// Command pause is the real node's Pod sandbox: the process that holds a Pod's namespaces
// while its containers come and go. It reaps the orphans a shared PID namespace hands it
// and exits 0 on SIGINT or SIGTERM. The local cluster builds it from this file, because the
// sandbox images of registries cannot be pulled on these machines.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
