"""The part of OpenAI's OpenAPI description that covers the routes ftaas shares with OpenAI."""
