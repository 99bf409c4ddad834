// ldbdump prints every record of a LevelDB as goleveldb reads it: one line per record, the key
// and the value in hex, separated by a space. It opens the index read-only, so it changes nothing.
package main

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/syndtr/goleveldb/leveldb"
	"github.com/syndtr/goleveldb/leveldb/opt"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: ldbdump DB")
		os.Exit(2)
	}
	db, err := leveldb.OpenFile(os.Args[1], &opt.Options{ErrorIfMissing: true, ReadOnly: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(1)
	}
	defer db.Close()
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	iter := db.NewIterator(nil, nil)
	for iter.Next() {
		fmt.Fprintf(out, "%s %s\n", hex.EncodeToString(iter.Key()), hex.EncodeToString(iter.Value()))
	}
	iter.Release()
	if err := iter.Error(); err != nil {
		fmt.Fprintln(os.Stderr, "iterate:", err)
		os.Exit(1)
	}
}
