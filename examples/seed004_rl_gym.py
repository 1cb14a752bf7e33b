# Seed 004's RL quick start, with only the import line changed (hyperscalees.torch -> eggroll_rl) and
# gym.vector.make replaced by gymnasium 1.x's gym.make_vec.
import gymnasium as gym
import torch
import torch.nn as nn
from eggroll_rl import EggrollStrategy

# Vectorized environment: one env per population member
population_size = 64
envs = gym.make_vec("CartPole-v1", num_envs=population_size)

# Policy network
policy = nn.Sequential(
    nn.Linear(4, 32), nn.Tanh(),
    nn.Linear(32, 2)
).cuda()

strategy = EggrollStrategy(sigma=0.1, lr=0.01, rank=4)
strategy.setup(policy)

for epoch in range(100):
    obs, _ = envs.reset()
    episode_returns = torch.zeros(population_size, device='cuda')
    dones = torch.zeros(population_size, dtype=torch.bool, device='cuda')
    
    with strategy.perturb(population_size=population_size, epoch=epoch) as pop:
        while not dones.all():
            obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device='cuda')
            
            with torch.no_grad():
                # All 64 policies evaluated in one call
                action_logits = pop.batched_forward(policy, obs_tensor)
            
            actions = action_logits.argmax(dim=-1).cpu().numpy()
            obs, rewards, terminated, truncated, _ = envs.step(actions)
            
            episode_returns += torch.as_tensor(rewards, device='cuda') * (~dones).float()
            dones = dones | torch.as_tensor(terminated | truncated, device='cuda')
    
    strategy.step(episode_returns)
    print(f"Epoch {epoch}: mean={episode_returns.mean():.1f}, max={episode_returns.max():.1f}")
