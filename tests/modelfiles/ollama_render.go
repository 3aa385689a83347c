// Renders an Ollama Modelfile TEMPLATE the way Ollama does for /api/chat, for tests/modelfiles/test_ollama.py.
//
// Input (stdin, JSON): {"template": TEMPLATE, "system": SYSTEM, "messages": [{"role", "content"}...]}.
// As Ollama's server/routes.go ChatHandler does, the Modelfile's SYSTEM is prepended as a system message when the
// request's first message is not one; the template is Go's text/template executed with Ollama's template values
// (.Messages with .Role/.Content, .System, .Prompt, .Response). Output (stdout): the rendered prompt.
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []Message `json:"messages"`
}

type Values struct {
	Messages []Message
	System   string
	Prompt   string
	Response string
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	msgs := in.Messages
	if len(msgs) > 0 && msgs[0].Role != "system" && in.System != "" {
		msgs = append([]Message{{Role: "system", Content: in.System}}, msgs...)
	}
	system := ""
	for _, m := range msgs {
		if m.Role == "system" {
			system = m.Content
		}
	}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(in.Template))
	if err := tmpl.Execute(os.Stdout, Values{Messages: msgs, System: system}); err != nil {
		panic(err)
	}
}
